"""`flwr run .` — the same experiment through Flower's own CLI writes the same results contract (slow).

Flower's home is a temporary directory (FLWR_HOME), so the SuperLink that `flwr run` leaves behind is ours alone;
the test stops it by its own process ids."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
TINY_TOML = """
name = "flwrrun"
[data]
dataset = "synthetic"
samples = 600
features = 20
informative = 8
classes = 3
clients = 10
[model]
hidden = [32]
[train]
rounds = 2
[unlearn]
methods = ["retrain", "finetune"]
[sim]
device = "cpu"
"""


def _superlinks(home: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"flower-superlink.*{home}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.skipif(shutil.which("pgrep") is None, reason="needs pgrep to stop the SuperLink it starts")
def test_flwr_run_writes_results(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    exp = tmp_path / "exp.toml"
    exp.write_text(TINY_TOML)
    bindir = Path(sys.executable).parent  # flwr starts `flower-superlink` from PATH
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    flwr = bindir / "flwr"
    before = {p.name for p in (ROOT / "runs").glob("flwrrun-*")} if (ROOT / "runs").exists() else set()
    cmd = [str(flwr), "run", ".", "--run-config", f'experiment="{exp}"', "--federation-config", "num-supernodes=10",
           "--stream"]
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        if res.returncode != 0 and "Failed to start local SuperLink within" in res.stdout:
            # Flower gives its background SuperLink a fixed 15 s to start; on a loaded 2-core machine its imports
            # alone can take longer. That is Flower's start-up, not our run: try once more, same check after.
            for pid in _superlinks(home):
                os.kill(pid, signal.SIGTERM)
            for _ in range(40):  # bounded wait (10 s) for the port to be free again
                if not _superlinks(home):
                    break
                time.sleep(0.25)
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        new = [p for p in (ROOT / "runs").glob("flwrrun-*") if p.name not in before]
        assert len(new) == 1, res.stdout[-2000:]
        run_dir = new[0]
        for f in ("config.toml", "summary.json", "per_client.csv", "ledger.csv", "rounds.csv", "report.md",
                  "models/original.pt", "models/retrain.pt", "models/finetune.pt"):
            assert (run_dir / f).is_file(), f
    finally:
        for pid in _superlinks(home):
            os.kill(pid, signal.SIGTERM)
        for p in (ROOT / "runs").glob("flwrrun-*"):
            if p.name not in before:
                shutil.rmtree(p, ignore_errors=True)
