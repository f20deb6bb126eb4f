"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they bite: a forbidden import added to a
copy of the code base (function-local, the kind that hid cycles) breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# --no-cache: a cached import graph outlives moved modules and reports edges that no longer exist
LINT = [sys.executable, "-c",
        "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c(['--no-cache']))"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(LINT, capture_output=True, text=True, cwd=root, env=env, timeout=120)


def test_import_contracts_are_kept() -> None:
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def _copy_with(tmp_path: Path, module: str, statement: str) -> subprocess.CompletedProcess:
    """Lint a copy of the code base in which ``module`` gained a function-local ``statement``."""
    for part in ("fedunlearn", "strategies", "clients"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / (module.replace(".", "/") + ".py")
    target.write_text(target.read_text() + f"\n\ndef _sneak() -> None:\n    {statement}  # noqa: F401\n")
    return _lint(tmp_path)


def test_a_forbidden_function_local_import_breaks_them(tmp_path: Path) -> None:
    out = _copy_with(tmp_path, "fedunlearn.stages.verdicts", "import fedunlearn.engine.phases")
    assert out.returncode != 0 and "fedunlearn.stages.verdicts -> fedunlearn.engine.phases" in out.stdout, out.stdout


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """The FedAvg building block reaching up into the pipeline (the kind of cycle the late imports hid)."""
    out = _copy_with(tmp_path, "fedunlearn.fl.fedavg", "import fedunlearn.pipeline")
    assert out.returncode != 0 and "fedunlearn.fl.fedavg -> fedunlearn.pipeline" in out.stdout, out.stdout
