"""The run folder: where a run keeps its inputs, its finished stages and its outputs, and what a resume must match.

    manifest.json             inputs and their hashes, options, packages, device: what a resume must match
    plan.json                 the plan as it was run (and profile.json, the dense profile it was decided on)
    stages/<stage>.json       one per finished stage, written atomically and last: its presence marks the stage done
    <rank>-<name>/pruned/     the pruned checkpoint (+ masks.safetensors for masked kinds)
    <rank>-<name>/model/      the recovered checkpoint (the pruned one when recovery is "none")
    results.json, report.html
    .planner-partial/         the run's own temporaries: the only place a resume (or a fresh start) deletes

The folder is new, empty, or a run of this tool; a folder of other files is refused. A fresh run that fails before
its first stage removes what it wrote, so the same --out can be used again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from planner.errors import InputError

RUN_KIND = "planner.run"
RUN_VERSION = 1
SCRATCH = ".planner-partial"  # the run's own temporaries, and nothing else: the only place a resume cleans
RESUME_MUST_MATCH = (("input_hashes", "inputs"), ("candidates", "candidates"), ("options", "options"))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(kw_only=True)
class Manifest:
    """manifest.json (fields in the order written)."""

    version: int = RUN_VERSION
    kind: str = RUN_KIND
    planner_version: str
    plan: str  # the plan file as given
    model: dict[str, str | None]  # spec (what the plan named), name, path
    input_hashes: dict[str, str]  # plan, model, eval_text:<file>, eval_prompts:<file> -> sha256
    candidates: list[int]  # ranks
    options: dict[str, Any]  # RunOptions.fingerprint()
    packages: dict[str, str]
    device: dict[str, Any]  # results.DeviceInfo
    started_at: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def default_run_dir(plan_path: Path, plan_sha: str, ranks: list[int]) -> Path:
    key = hashlib.sha256(f"{plan_sha}|{','.join(map(str, ranks))}".encode()).hexdigest()[:8]
    return Path("runs") / f"{plan_path.stem}-{key}"


def input_hashes(plan_sha: str, model_sha: str, eval_text: list[str], eval_prompts: list[str]) -> dict[str, str]:
    """sha256 of every input a resume must find unchanged; a user file that is not a readable file is bad input."""
    from planner.documents import check_file
    from planner.run.provenance import sha256_file

    hashes = {"plan": plan_sha, "model": model_sha}
    for role, paths in (("eval_text", eval_text), ("eval_prompts", eval_prompts)):
        for p in paths:
            check_file(p, f"--{role.replace('_', '-')} file")
            hashes[f"{role}:{p}"] = sha256_file(p)
    return hashes


class RunFolder:
    def __init__(self, root: Path):
        self.root = root
        self.stages = root / "stages"
        self.scratch = root / SCRATCH

    def relative(self, path: Path) -> str:
        """Stage outputs name files relative to the run folder, so a moved folder still resumes."""
        return Path(path).relative_to(self.root).as_posix()

    def path(self, relative: str) -> Path:
        return (self.root / relative).resolve()

    # -- stage records --

    def marker(self, stage: str) -> Path:
        return self.stages / f"{stage.replace(':', '-')}.json"

    def done(self, stage: str) -> bool:
        return self.marker(stage).is_file()

    def read(self, stage: str) -> dict[str, Any]:
        """The record of a finished stage: {"stage", "seconds", "finished_at", "output"}."""
        from planner.documents import load_document

        marker = self.marker(stage)
        try:
            record = load_document(marker, "stage output", f"stage output {str(marker)!r}", syntax="json")
        except InputError as exc:
            raise InputError(f"{exc}{self.redo_hint(stage)}") from None
        if not isinstance(record, dict) or not isinstance(record.get("output"), dict):
            raise InputError(f"stage output {str(marker)!r} is not a finished stage record{self.redo_hint(stage)}")
        return record

    def redo_hint(self, stage: str) -> str:
        return f"; delete {str(self.marker(stage))!r} to redo that stage"

    def write(self, stage: str, seconds: float, output: dict[str, Any]) -> None:
        record = {"stage": stage, "seconds": seconds, "finished_at": utc_now(), "output": output}
        self.write_text(self.marker(stage), json.dumps(record, indent=1, default=str))

    def write_text(self, path: Path, text: str) -> Path:
        from planner.documents import write_atomic

        return write_atomic(path, text, what="run file", scratch=self.scratch)

    def finished_stages(self) -> list[Path]:
        return sorted(self.stages.glob("*.json")) if self.stages.is_dir() else []

    # -- starting, resuming, undoing --

    def check_usable(self, resume: bool) -> dict[str, Any]:
        """Refuse an --out that is a file, a folder of other things, or a finished run without --resume; return the
        earlier manifest of a run folder ({} for a new one)."""
        from planner.documents import load_document

        root = self.root
        shown = str(root)
        if root.exists() and not root.is_dir():
            raise InputError(f"run folder {shown!r} exists and is not a folder (accepted: a new or empty folder, "
                             "or a run folder to --resume)")
        manifest_path = root / "manifest.json"
        if not manifest_path.exists():
            if resume:
                raise InputError(f"nothing to resume in {shown!r} (no manifest.json); run without --resume")
            if root.is_dir() and any(root.iterdir()):
                raise InputError(f"run folder {shown!r} is not empty and holds no run; planner writes a run only "
                                 "into a new or empty folder (accepted: another --out)")
            return {}
        try:
            old = load_document(manifest_path, "run manifest", f"run manifest {str(manifest_path)!r}", syntax="json")
        except InputError as exc:
            raise InputError(f"{exc}; the run in {shown!r} cannot be resumed or reused: start a new run with another "
                             "--out") from None
        if not isinstance(old, dict) or old.get("kind") != RUN_KIND:
            raise InputError(f"{str(manifest_path)!r} is not a planner run manifest; planner writes a run only into "
                             "a new or empty folder (accepted: another --out)")
        if not resume and self.finished_stages():
            raise InputError(f"run folder {shown!r} already holds a run; pass --resume to continue it, "
                             "or --out NEW_FOLDER for a fresh run")
        return old

    def start(self, manifest: Manifest, old: dict[str, Any], resume: bool, plan_path: Path, plan) -> bool:
        """Create the folder and begin the run: a resume checks that its inputs, candidates and options are those of
        the earlier start (and keeps its start time); a fresh run writes plan.json, profile.json and manifest.json.
        Returns whether the folder was created."""
        created = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from planner.documents import write_error

            raise write_error(exc, "run folder", self.root) from None
        if resume:
            check_resume(manifest, old, self.root)
            manifest.started_at = old.get("started_at", manifest.started_at)
            self.clean_partial()
        else:
            self.clean_partial()  # a fresh start over a run that never finished a stage
            self.write_text(self.root / "plan.json", plan_path.read_text(encoding="utf-8"))
            self.copy_profile(plan)
            self.write_text(self.root / "manifest.json", manifest.to_json())
        return created

    def copy_profile(self, plan) -> None:
        """The dense profile the plan was decided on, beside results.json, so the run folder (and its report) stays
        whole when the profile cache is cleared. A plan without one (or whose cached file is gone) is not an error."""
        recorded = (plan.profile or {}).get("path")
        if recorded and Path(recorded).is_file():
            try:
                text = Path(recorded).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return
            self.write_text(self.root / "profile.json", text)

    def undo_fresh_start(self, created: bool) -> None:
        """Remove what a fresh run wrote before its first stage (its own files only)."""
        for name in ("manifest.json", "plan.json", "profile.json"):
            (self.root / name).unlink(missing_ok=True)
        self.clean_partial()
        for empty in (self.stages, self.root) if created else (self.stages,):
            try:
                empty.rmdir()
            except OSError:
                pass

    def clean_partial(self) -> None:
        """Remove the temporaries a hard kill (not Ctrl-C) may have left. The tool writes every temporary of a run
        under its own scratch folder, so nothing else in the run folder (or below it) is ever deleted."""
        if self.scratch.is_dir() and not self.scratch.is_symlink():
            shutil.rmtree(self.scratch, ignore_errors=True)


def check_resume(manifest: Manifest, old: dict[str, Any], root: Path) -> None:
    """A resume continues the same run: its inputs, candidates and options must be those recorded at its start."""
    new = asdict(manifest)
    for key, what in RESUME_MUST_MATCH:
        if old.get(key) != new[key]:
            a, b = old.get(key) or {}, new[key]
            if isinstance(a, dict) and isinstance(b, dict):
                detail = ", ".join(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))
            else:
                detail = f"{a} -> {b}"
            raise InputError(f"cannot resume {str(root)!r}: its {what} changed since it started ({detail}); "
                             "run again without --resume into a new --out folder")


__all__ = ["RunFolder", "Manifest", "SCRATCH", "RUN_KIND", "RUN_VERSION", "default_run_dir", "input_hashes",
           "check_resume", "utc_now"]
