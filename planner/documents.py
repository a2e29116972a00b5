"""Reading and writing the tool's files safely: one place for every document (plan, results, policy, workload,
rules, GPU files, profiles).

Reading refuses, as an `InputError` that names the file: a folder where a file is expected, a missing file, a
binary or non-UTF-8 file, invalid JSON/YAML, duplicate keys, non-finite numbers (NaN, Infinity, 1e400), YAML whose
aliases expand past `MAX_NODES` values (an "alias bomb"), and nesting deeper than `MAX_DEPTH`.

Writing is atomic (temporary name + rename) under the user's umask, and refuses to replace a file the tool did not
write; a destination that cannot be written (permissions, a full disk, a read-only file system) is an InputError.

Messages quote values through `show`, which bounds their length, so no message echoes a whole input; a pydantic
ValidationError is described by `describe_validation`, the one formatter of validation errors.

    data = load_mapping("gate.yaml", "gate policy")
    policy = load_validated("gate.yaml", GatePolicy, "gate policy")
    write_atomic("out/report.html", html, what="report")
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import yaml

from planner.errors import OS_INPUT_ERRORS, InputError, did_you_mean

MAX_MESSAGE = 1500  # characters of an error message shown to the user
MAX_SHOWN = 80  # characters of one quoted value inside a message
MAX_NODES = 100_000  # values a YAML document may expand to, aliases counted each time they are used
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_BYTES = 64 * 2**20  # a document larger than this is not one of ours

_WRITE_ERRORS = OS_INPUT_ERRORS


# -- bounded messages -------------------------------------------------------------------------------------------


def show(value: Any, limit: int = MAX_SHOWN) -> str:
    """repr(value), cut to `limit` characters; containers are summarised, never expanded."""
    if isinstance(value, dict):
        text = f"a mapping of {len(value)} keys"
        return text if len(value) > 3 else _cut(repr(value), limit, text)
    if isinstance(value, (list, tuple)):
        text = f"a list of {len(value)} items"
        return text if len(value) > 3 else _cut(repr(value), limit, text)
    return _cut(repr(value), limit)


def _cut(text: str, limit: int, fallback: str | None = None) -> str:
    if len(text) <= limit:
        return text
    return fallback if fallback is not None else text[: limit - 12] + f"... ({len(text)} chars)"


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message no longer than `limit` characters."""
    return message if len(message) <= limit else message[: limit - 40] + f" ... ({len(message) - limit + 40} more)"


def describe_validation(exc, model=None, noun: str = "field", named: bool = False, limit: int = 8) -> str:
    """A pydantic ValidationError as 'loc: message (got value); ...', every value and the count of errors bounded.

    A mapping is never quoted (it may be the whole input), nor a text the message already quotes. `model`: the class
    that was validated; an unknown key then gets "did you mean" among the keys it accepts. `noun`: what the document
    calls its keys ("field", "key"); `named`: write a location as "field 'a.b'" instead of "a.b"."""
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        where = f"{noun} {_cut(path, 120)!r}" if named else _cut(path, 120)
        if err["type"] == "extra_forbidden":
            parts.append(_unknown_key(err["loc"], model, noun) or f"{where}: unknown {noun}")
            continue
        msg = _cut(err["msg"].removeprefix("Value error, "), 300)
        got = err.get("input")
        if got is not None and not isinstance(got, dict) and not (isinstance(got, str) and show(got) in msg):
            msg += f" (got {show(got)})"
        parts.append(f"{where}: {msg}" if path else msg)
    more = f"; ... {len(parts) - limit} more" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def _unknown_key(loc: tuple, model, noun: str) -> str | None:
    """'unknown field 'x'; did you mean y? (accepted: ...)', naming the nested part it is in; None without a model."""
    owner = model
    for part in loc[:-1]:  # walk to the nested model that refused the key
        fields = getattr(owner, "model_fields", None)
        if fields is None:
            return None
        if isinstance(part, int) or part not in fields:
            continue  # a list index or a mapping key: the same model holds the next part
        annotation = fields[part].annotation
        owner = next((a for a in getattr(annotation, "__args__", (annotation,))
                      if isinstance(a, type) and hasattr(a, "model_fields")), None)
    if owner is None or not hasattr(owner, "model_fields"):
        return None
    msg = did_you_mean(str(loc[-1]), owner.model_fields, noun)
    return msg if len(loc) == 1 else f"in {_cut('.'.join(str(p) for p in loc[:-1]), 120)!r}: {msg}"


# -- reading ----------------------------------------------------------------------------------------------------


def check_file(path: str | Path, what: str, hint: str = "") -> Path:
    """The path, when it names an existing regular file; else an InputError saying what it is instead."""
    path = Path(path)
    shown = show(str(path))
    if path.is_dir():
        raise InputError(f"{what} {shown} is a folder; expected a file{hint}")
    if not path.exists():
        raise InputError(f"{what} {shown} does not exist{hint}")
    if not path.is_file():
        raise InputError(f"{what} {shown} is not a regular file{hint}")
    return path


def read_text(path: str | Path, what: str, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of a file; binary, non-UTF-8, huge or unreadable files are InputErrors naming it."""
    path = check_file(path, what)
    shown = show(str(path))
    try:
        if path.stat().st_size > max_bytes:
            raise InputError(f"{what} {shown} is {path.stat().st_size:,} bytes; a {what} is at most "
                             f"{max_bytes // 2**20} MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {shown}: {exc.strerror or exc}") from None
    if b"\0" in data[:65536]:
        raise InputError(f"{what} {shown} is a binary file; expected UTF-8 text (JSON or YAML)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {shown} is not UTF-8 text (byte {exc.start}); expected JSON or YAML") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {_cut(text, 40)} is not finite (accepted: finite numbers)")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON accepts here (accepted: finite numbers)")


def _unique_pairs(pairs):
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {show(key)}")
        out[key] = value
    return out


def parse_json(text: str, where: str) -> Any:
    """JSON without duplicate keys or non-finite numbers; errors name `where`."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs, parse_float=_finite, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except ValueError as exc:
        raise InputError(f"{where}: {_cut(str(exc), 300)}") from None
    except RecursionError:
        raise InputError(f"{where}: nested too deeply (accepted: at most {MAX_DEPTH} levels)") from None


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe YAML subset, minus duplicate keys, non-finite floats, alias bombs and deep nesting."""

    def construct_document(self, node):
        _check_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key; SafeConstructor reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {show(key)} (each key may appear once)", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_float(self, node):
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise yaml.constructor.ConstructorError(
                None, None, f"number {_cut(str(node.value), 40)} is not finite (accepted: finite numbers)",
                node.start_mark)
        return value


_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)


def _check_size(root) -> None:
    """Count the values `root` expands to (each alias use counted in full) and its depth, without expanding."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    stack = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            depths[key] = 1 + max((depths[id(c)] for c in children), default=0)
            if sizes[key] > MAX_NODES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the document expands to more than {MAX_NODES:,} values (excessive aliases; "
                                "accepted: plain YAML without alias bombs)", node.start_mark)
            if depths[key] > MAX_DEPTH:
                raise yaml.constructor.ConstructorError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", node.start_mark)
            continue
        if key in sizes:
            continue
        if key in on_path:  # a recursive alias
            raise yaml.constructor.ConstructorError(None, None, "a recursive alias", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, where: str) -> Any:
    """Safe YAML without duplicate keys, non-finite numbers or alias bombs; errors name `where`."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: not valid YAML: {_cut(str(exc), 400)}") from None
    except RecursionError:
        raise InputError(f"{where}: nested too deeply (accepted: at most {MAX_DEPTH} levels)") from None


def load_document(path: str | Path, what: str, where: str | None = None,
                  syntax: Literal["json", "yaml"] | None = None) -> Any:
    """A JSON or YAML file (`syntax`; default: JSON for `.json`, else YAML), checked as above; parse errors start with
    `where` (default: what + path)."""
    text = read_text(path, what)
    where = where or f"{what} {show(str(path))}"
    json_file = syntax == "json" if syntax else Path(path).suffix == ".json"
    return parse_json(text, where) if json_file else parse_yaml(text, where)


def load_mapping(path: str | Path, what: str, accepted: str = "", where: str | None = None,
                 syntax: Literal["json", "yaml"] | None = None) -> dict:
    """A document that must be a mapping."""
    where = where or f"{what} {show(str(path))}"
    data = load_document(path, what, where, syntax)
    if not isinstance(data, dict):
        extra = f" (accepted keys: {accepted})" if accepted else ""
        raise InputError(f"{where} must hold a mapping of fields, got {type(data).__name__}{extra}")
    return data


M = TypeVar("M")


def load_validated(path: str | Path, model: type[M], what: str, *, where: str | None = None, accepted: str = "",
                   invalid: str | None = None, suggest: bool = False, named: bool = False,
                   syntax: Literal["json", "yaml"] | None = None) -> M:
    """One pydantic document from a JSON or YAML file. Anything wrong with it is an InputError that starts with
    `where` (default: what + path): the file (see `read_text`), its syntax, a document that is not a mapping, and
    each invalid field (`describe_validation`; `suggest`: "did you mean" for an unknown key, `named`: "field 'x'").
    `invalid` comes between `where` and the problems (default: " is not a valid <what>"); `accepted` lists the keys
    a mapping may hold."""
    from pydantic import ValidationError

    where = where or f"{what} {show(str(path))}"
    data = load_mapping(path, what, accepted, where, syntax)
    prefix = where + (f" is not a valid {what}" if invalid is None else invalid)
    hint = f" (accepted keys: {accepted})" if accepted else ""
    try:
        return model.model_validate(data)  # type: ignore[attr-defined]
    except ValidationError as exc:
        problems = describe_validation(exc, model if suggest else None, named=named)
        raise InputError(f"{prefix}: {problems}{hint}") from None
    except InputError as exc:  # a nested document (a Workload's dtype, ...) that checks itself
        raise InputError(f"{prefix}: {exc}") from None
    except (ValueError, TypeError, ZeroDivisionError, OverflowError) as exc:  # a figure computed from bad data
        raise InputError(f"{prefix}: {_cut(str(exc), 300)}") from None


# -- writing ----------------------------------------------------------------------------------------------------


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(exc: OSError, what: str, path: str | Path) -> InputError:
    reason = _WRITE_ERRORS.get(exc.errno, exc.strerror or type(exc).__name__)
    return InputError(f"cannot write {what} {show(str(path))}: {reason} (accepted: a writable destination)")


def write_atomic(path: str | Path, content: str | bytes | Callable[[Path], Any], what: str = "file",
                 scratch: str | Path | None = None) -> Path:
    """Write to `path` so that a reader (or a crash) never sees a half-written file: the one atomic write of the tool.
    `content` is text, bytes, or a function that writes the file at the temporary path it is given (a safetensors
    writer). The temporary file lives in `scratch` (default: beside `path`, same file system) and the file ends with
    the usual mode under the umask. A destination that cannot be written is an InputError naming it."""
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(scratch) if scratch is not None else path.parent
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=tmp_dir)
        with os.fdopen(fd, "wb") as f:
            if not callable(data):
                f.write(data)
        if callable(data):
            data(Path(tmp))  # a writer of its own format fills the temporary file
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; a document is for sharing
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(exc, what, path) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_output(path: str | Path, what: str, ours: Callable[[Path], bool], example: str) -> Path:
    """A destination that may be written: a new file, or one the tool wrote (`ours`). A folder, or a file the tool
    did not write (a user's file, results.json, ...), is refused before any work."""
    path = Path(path)
    shown = show(str(path))
    if path.is_dir():
        raise InputError(f"{what} {shown} is a folder; give a file path such as {example}")
    if path.exists() or path.is_symlink():
        try:
            mine = path.is_file() and ours(path)
        except OSError:
            mine = False
        if not mine:
            raise InputError(f"refusing to overwrite {shown}: it exists and was not written by planner as a {what}; "
                             "choose another output path or remove it")
    return path


def starts_with(path: Path, marker: bytes, within: int = 4096) -> bool:
    """Whether `marker` occurs in the first `within` bytes of the file."""
    with open(path, "rb") as f:
        return marker in f.read(within)


__all__ = ["show", "bounded", "describe_validation", "check_file", "read_text", "parse_json", "parse_yaml",
           "load_document", "load_mapping", "load_validated", "write_atomic", "check_output", "write_error", "umask",
           "MAX_MESSAGE"]
