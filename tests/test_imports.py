"""The code reads like the pipeline: no module imports one of a later stage.

Read from the source (ast), every import, function-level ones included, so that a backwards
import fails here the day it is written, even one that happens not to cycle at runtime.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bench"

# Stages in import order: a module may import its own stage and earlier ones. The runtime flow is
# config -> plan -> runner -> train / evaluate -> store -> report; packing, data, posembed and
# model are the libraries that the plan (grids, registry, one model built per variant) and
# training use, so they come before the plan. errors and runtime are shared leaves.
STAGES = [
    ("bench.errors", "bench.runtime"),
    ("bench.config",),
    ("bench.packing",),
    ("bench.data",),
    ("bench.posembed",),
    ("bench.model",),
    ("bench.plan",),
    ("bench.train",),
    ("bench.evaluate",),
    ("bench.store",),
    ("bench.report",),
    ("bench.runner",),
    ("bench.cli", "bench.perf"),
    ("bench",),   # the package's public API (bench/__init__.py)
]
LEAVES = STAGES[0]


def stage_of(module: str) -> int:
    """The stage of the longest stage prefix of ``module``; a module of no stage fails the test."""
    for length in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:length])
        for index, names in enumerate(STAGES):
            if prefix in names:
                return index
    pytest.fail(f"{module} belongs to no stage of tests/test_imports.py: add it where it runs in the pipeline")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every bench import in ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from . import x" may name a submodule: count it as the module it names.
            found += [(node.lineno, f"{base}.{alias.name}" if not node.module else base) for alias in node.names]
    return [(line, module) for line, module in found if module == "bench" or module.startswith("bench.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_later_stage(path):
    source = module_name(path)
    later = [f"line {line}: {target}" for line, target in imports(path) if stage_of(target) > stage_of(source)]
    assert not later, f"{source} (stage {STAGES[stage_of(source)]}) imports later stages: {later}"


@pytest.mark.parametrize("path", [p for p in MODULES if module_name(p) in LEAVES], ids=lambda p: p.name)
def test_shared_leaves_import_nothing_of_the_package(path):
    assert imports(path) == []


def test_the_check_sees_relative_and_function_level_imports():
    batching = {target for _, target in imports(PACKAGE / "data" / "batching.py")}
    assert {"bench.config", "bench.errors", "bench.packing", "bench.data.resolution"} <= batching
    runner = {target for _, target in imports(PACKAGE / "runner.py")}
    assert "bench.report" in runner, "the report is imported inside a function"
    assert stage_of("bench.report.tables") == stage_of("bench.report") > stage_of("bench.store")
