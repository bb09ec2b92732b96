"""The package's modules only look down: no module imports one above it (no import cycles).

The ranks are the architecture: errors and the block at the bottom, then kernels, the run store
(beside the results cache and results files), the estimator contract, the plugin machinery, the
estimators and the recording side, the engine, and the command line at the top. Imports under ``TYPE_CHECKING`` and inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ibframe"

RANKS: dict[str, int] = {
    "errors": 0,
    "_validation": 1,
    "block": 1,
    "kernels": 2,
    "theory": 2,
    "store.layout": 2,  # the store's parts: format rules, the writer lock, checked reads,
    "store.lock": 2,  # Run, create_run; siblings, below the package that gathers them
    "store.integrity": 2,
    "store.run": 2,
    "store.create": 2,
    "store": 3,
    "results": 3,
    "cache": 3,
    "recording.spec": 3,
    "recording.datasets": 3,
    "recording.nn": 3,
    "estimator": 4,
    "registry": 5,
    "hookspecs": 6,
    "plugins": 7,
    "estimators": 8,
    "recording.recorder": 4,
    "runs": 4,  # several runs: resolving, stacking, aggregating (estimate_runs is the engine's)
    "recording": 8,
    "engine": 9,
    "testing": 10,
    "plot": 10,
    "demo": 11,
    "cli": 12,
}


def _rank(module: str) -> int:
    """The rank of ``ibframe.<module>``: its own entry, else its package's."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        key = ".".join(parts[:end])
        if key in RANKS:
            return RANKS[key]
    msg = f"module ibframe.{module} has no rank in tests/test_layers.py"
    raise KeyError(msg)


def _modules() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if parts:
            found.append(".".join(parts))
    return found


def _imports(module: str) -> set[str]:
    path = PACKAGE.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("ibframe."):
                names.add(node.module.removeprefix("ibframe."))
            elif node.module == "ibframe":
                names.update(a.name for a in node.names if a.name != "__version__")
        elif isinstance(node, ast.Import):
            names.update(
                a.name.removeprefix("ibframe.") for a in node.names if a.name.startswith("ibframe.")
            )
    return names


@pytest.mark.parametrize("module", _modules())
def test_module_imports_only_downwards(module: str) -> None:
    """Every ibframe module that ``module`` imports ranks below it; siblings inside one
    subpackage (``kernels.mixture`` and ``kernels.binning``) may share a rank."""
    own = _rank(module)
    package = module.split(".")[0] if "." in module else None
    for imported in _imports(module):
        sibling = package is not None and imported.split(".")[0] == package
        allowed = _rank(imported) <= own if sibling else _rank(imported) < own
        assert allowed, f"ibframe.{module} (rank {own}) imports ibframe.{imported} (rank {_rank(imported)})"
