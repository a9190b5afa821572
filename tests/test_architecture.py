"""The house rules, read from the source: who may import whom.

Imports are read with ``ast`` from every module of ``mer/``, function-level
imports included (a cycle hidden inside a function is still a cycle).
"""

import ast
from pathlib import Path

import pytest

from mer.stages import STAGES

ROOT = Path(__file__).resolve().parents[1] / "mer"
#: Modules that take a whole job: the stages, and what starts them (CLI, runner, cluster submission).
STAGE_MODULES = {stage.target.partition(":")[0] for stage in STAGES.values()}
EDGE_MODULES = {"mer.cli", "mer.runner", "mer.config", "mer.remote.submit", "mer.remote.client", "mer.remote.manage"}
#: Steps and executors that never import Ray (DESIGN.md).
NO_RAY = ("mer.corpus", "mer.encoders", "mer.store", "mer.models", "mer.report", "mer.runfolder", "mer.metrics",
          "mer.voting", "mer.config")


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported module, imported name or "")} for every import statement in it."""
    out = {}
    for path in ROOT.rglob("*.py"):
        module, found = _name(path), set()
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(a.name, "") for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).rstrip(".")
                found |= {(base, a.name) for a in node.names}
        out[module] = found
    return out


IMPORTS = _imports()
MODULES = set(IMPORTS)


def _targets(module: str) -> set[str]:
    """The mer modules ``module`` imports (``from mer.train import cache`` counts as mer.train.cache)."""
    out = set()
    for base, name in IMPORTS[module]:
        if f"{base}.{name}" in MODULES:
            out.add(f"{base}.{name}")
        elif base in MODULES:
            out.add(base)
    return out


def test_no_import_cycle():
    graph = {m: _targets(m) - {m} for m in MODULES}
    # Tarjan's strongly connected components: a component of more than one module is a cycle
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_only_stages_and_the_edge_take_a_whole_job():
    takers = {m for m, found in IMPORTS.items() if ("mer.config", "Job") in found}
    assert takers <= STAGE_MODULES | EDGE_MODULES, sorted(takers - STAGE_MODULES - EDGE_MODULES)


@pytest.mark.parametrize("package, forbidden", [
    ("mer.serve", ("mer.selftrain",)),
    ("mer.report", ("mer.selftrain", "mer.train")),
    ("mer.selftrain", ("mer.report",)),
])
def test_readers_of_the_run_folder_do_not_reach_into_the_loop(package, forbidden):
    """Serving and the report read the run folder through mer.runfolder; the loop never imports the report."""
    offenders = {(m, t) for m in MODULES if m == package or m.startswith(package + ".")
                 for t in _targets(m) if t.startswith(forbidden)}
    assert offenders == set()


def test_steps_never_import_ray():
    offenders = {(m, base) for m, found in IMPORTS.items() if m.startswith(NO_RAY)
                 for base, _ in found if base == "ray" or base.startswith("ray.")}
    assert offenders == set()
