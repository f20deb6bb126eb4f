"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they bite: a forbidden import added to a
copy of the code base (function-local, the kind that hid cycles) breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(LINT, capture_output=True, text=True, cwd=root, env=env, timeout=120)


def test_import_contracts_are_kept() -> None:
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_forbidden_function_local_import_breaks_them(tmp_path: Path) -> None:
    for part in ("fedunlearn", "strategies", "clients"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "fedunlearn" / "stages" / "verdicts.py"
    sneak = "\n\ndef _sneak() -> None:\n    import fedunlearn.experiment  # noqa: F401\n"
    target.write_text(target.read_text() + sneak)
    out = _lint(tmp_path)
    assert out.returncode != 0 and "fedunlearn.stages.verdicts -> fedunlearn.experiment" in out.stdout, out.stdout
