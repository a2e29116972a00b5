"""The package's layers: no module imports one of a higher layer, and no modules import each other in a cycle.

Every import counts, at module level and inside functions (a deferred import is still a dependency), read with
`ast` from the source of every module under planner/. The one exception: imports under `if TYPE_CHECKING:` never
run, so they count for the direction of the layers but cannot close a cycle (an annotation naming a type of a module
that calls back is the usual way to type such a pair).

Lowest layer first. An entry names a module and everything below it (`planner.run` is every `planner.run.*`); the
most specific entry wins (`planner.run.results` sits below `planner.run`); the root `planner` names only its
`__init__`, the package's top-level API, which sits on top (the version lives in `planner._version`, at the bottom).
A module in no layer fails the test: place a new module deliberately.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "planner"

LAYERS: list[list[str]] = [
    # foundations: errors, safe documents, console output, paths, the version; they import nothing above them
    ["planner._version", "planner.errors", "planner.documents", "planner.docbase", "planner.console",
     "planner.paths", "planner.stats"],
    # what a user names: workload, architecture adapters, the GPU and runtime catalogs (data files, like the GPUs:
    # a workload names its runtime, so the runtime catalog sits here rather than with the performance model), goals,
    # the bundled text
    # (and arrival streams: the workload checks --request-rate and --trace when it is built)
    ["planner.workload", "planner.arch", "planner.gpus", "planner.goals", "planner.perf.runtimes",
     "planner.perf.arrivals", "planner.data"],
    # loading models, the performance model, profiling
    ["planner.models", "planner.perf", "planner.profile"],
    # what a run does to a model
    # (the latency benchmark delegates to vLLM's own through planner.vllm_bench; planner.layered prunes and
    # evaluates a model larger than memory one decoder layer at a time, through the same engines)
    ["planner.prune", "planner.quant", "planner.recover", "planner.evaluate", "planner.export", "planner.latency",
     "planner.vllm_bench", "planner.layered"],
    # pruning kinds: each kind ties its spec and engine (planner.prune) to its shape and size formulas
    # (planner.profile.roofline), so it sits above both, and below the decision that asks it; the quality probe
    # applies steps (prune, quant) and measures them (evaluate) for the decision
    ["planner.kinds", "planner.probe"],
    # rules -> ranked candidates -> plan.json, and the main job as a library call (profile + decide)
    ["planner.decide"],
    ["planner.api"],
    # the documents of a run's results, read by the report and the gate
    ["planner.run.results", "planner.run.compare"],
    ["planner.report"],
    # running a plan (the runner renders the report at the end)
    ["planner.run"],
    # the gate, and experiment tracking (logs a run's documents and its gate verdict)
    ["planner.gate", "planner.track"],
    # entry points: the command line, and the package's own top-level API (planner.plan, planner.save_plan)
    ["planner", "planner.cli", "planner.__main__"],
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _nearest(name: str) -> str | None:
    """The module `name` names, or the closest package above it that exists (an attribute of a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ids.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return ids


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported planner module, line, runs) for every import in the module's source; `runs`: not TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_only = _type_checking_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        runs = id(node) not in typing_only
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            # `from planner.prune import masked` imports the module planner.prune.masked
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target == "planner" or target.startswith("planner."):
                resolved = _nearest(target)
                if resolved and resolved != module:
                    found.append((resolved, node.lineno, runs))
    return found


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for number, entries in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry or (entry != "planner" and module.startswith(entry + "."))
            if matches and len(entry) > best_len:
                best, best_len = number, len(entry)
    return best


def test_the_import_reader_sees_deferred_relative_and_submodule_imports():
    runner = {target for target, _, _ in IMPORTS["planner.run.runner"]}
    assert {"planner.run.stages", "planner.run.folder", "planner.report"} <= runner  # report: inside a function
    assert "planner.prune.masked" in {t for t, _, _ in IMPORTS["planner.prune"]}  # from planner.prune import masked
    assert "planner.cli.plan_cmd" in {t for t, _, _ in IMPORTS["planner.cli"]}
    assert layer_of("planner.run.results") < layer_of("planner.report") < layer_of("planner.run.runner")
    assert layer_of("planner") == len(LAYERS) - 1 and layer_of("planner._version") == 0
    assert layer_of("planner.perf.runtimes") < layer_of("planner.perf.serving")


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, imports in IMPORTS.items():
        for target, line, _ in imports:
            if layer_of(target) is not None and layer_of(module) is not None and layer_of(target) > layer_of(module):
                upward.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {module} (layer "
                              f"{layer_of(module)}) imports {target} (layer {layer_of(target)})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # the shortest way back to the group's first module, through the group only
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for w in sorted(graph[v] & group):
                if w == start:
                    cycles.append(paths[v] + [start])
                    queue = []
                    break
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return sorted(cycles)


def test_the_cycle_finder_reports_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = {module: {target for target, _, runs in imports if runs} for module, imports in IMPORTS.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("entry", sorted({e for layer in LAYERS for e in layer}))
def test_every_layer_entry_is_a_module_or_one_to_come(entry):
    assert entry in MODULES
