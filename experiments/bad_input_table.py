"""Run every bad-input case of docs/bad-input.md through the real CLI and write the table from what it printed.

Each case is a command line and its expected exit code; the table records the one line the command printed (stderr
and stdout, unwrapped) and its exit code, so the documentation shows measured messages, never remembered ones.
``python experiments/bad_input_table.py`` rewrites docs/bad-input.md (about a minute: one tiny in-process run is
trained for the cases that need a finished run directory)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedunlearn.cli import app  # noqa: E402
from tests.conftest import TINY  # noqa: E402

QS = "experiments/quickstart.toml"
TINY_SET = [a for kv in TINY for a in ("--set", kv)]


def cases(tmp: Path, run: Path) -> list[tuple[str, list[str]]]:
    """(what, argv) pairs; ``run`` is a finished tiny run directory the audit/report cases damage copies of."""
    (tmp / "dir.toml").mkdir(exist_ok=True)
    (tmp / "latin1.toml").write_bytes("name = \"caf\xe9\"".encode("latin-1"))
    (tmp / "bad.toml").write_text("[train\nrounds = 3")
    (tmp / "afile").write_text("x")
    np_bad = tmp / "nan.npz"
    import numpy as np

    np.savez(np_bad, x=np.array([[np.nan, 1.0]] * 20), y=np.arange(20) % 2)
    np.savez(tmp / "huge.npz", x=np.ones((20, 2)), y=np.array([10**9] + [0] * 19))
    np.savez(tmp / "one.npz", x=np.ones((20, 2)), y=np.zeros(20, int))

    def damaged(name: str, action) -> str:  # noqa: ANN001
        d = tmp / f"run-{name}"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(run, d)
        action(d)
        return str(d)

    return [
        ("config file not found", ["run", "nope.toml"]),
        ("config path is a directory", ["run", str(tmp / "dir.toml")]),
        ("config not UTF-8", ["run", str(tmp / "latin1.toml")]),
        ("config not valid TOML", ["run", str(tmp / "bad.toml")]),
        ("unknown key (with a suggestion)", ["run", QS, "--set", "train.epochs=3"]),
        ("unknown section", ["run", QS, "--set", "trian.rounds=3"]),
        ("wrong type: a boolean for a count", ["run", QS, "--set", "train.rounds=true"]),
        ("absurd size", ["run", QS, "--set", "train.rounds=1000000000000"]),
        ("out of range: fraction", ["run", QS, "--set", "train.fraction=1.5"]),
        ("out of range: model width", ["run", QS, "--set", "model.hidden=[0]"]),
        ("negative seed", ["run", QS, "--set", "seed=-1"]),
        ("withdraw.round not a round", ["run", QS, "--set", 'withdraw.round="start"']),
        ("withdrawn client out of range", ["run", QS, "--set", "withdraw.clients=[12]"]),
        ("every client withdrawn", ["run", QS, "--set", "data.clients=2", "--set", "withdraw.clients=[0,1]"]),
        ("unknown method", ["run", QS, "--set", 'unlearn.methods=["retrain","forget_all"]']),
        ("unknown method table key", ["run", QS, "--set", "unlearn.pga.momentm=0.5"]),
        ("unknown dataset", ["run", QS, "--set", 'data.dataset="imagenet"']),
        ("unknown attack", ["run", QS, "--set", 'audit.attacks=["lira"]']),
        ("method that cannot forget a class", ["run", QS, "--set", "withdraw.clients=[]", "--set",
                                                "withdraw.classes=[3]", "--set", 'unlearn.methods=["retrain","pga"]']),
        ("unsafe run name", ["run", QS, "--set", 'name="../../x"']),
        ("--set without '='", ["run", QS, "--set", "train.rounds"]),
        ("--out is a file", ["run", QS, "--out", str(tmp / "afile")]),
        ("--out under a file", ["run", QS, "--out", str(tmp / "afile" / "run")]),
        ("npz with NaN features", ["run", *TINY_SET, "--set", 'data.dataset="npz"', "--set", f'data.path="{np_bad}"']),
        ("npz with a label of 10^9", ["run", *TINY_SET, "--set", 'data.dataset="npz"', "--set",
                                     f'data.path="{tmp / "huge.npz"}"']),
        ("npz with one class", ["run", *TINY_SET, "--set", 'data.dataset="npz"', "--set",
                                f'data.path="{tmp / "one.npz"}"']),
        ("training diverges (train.lr = 1e6)", ["run", *TINY_SET, "--set", "train.lr=1e6", "--out",
                                                str(tmp / "diverged")]),
        ("audit: retrain.pt empty", ["audit", damaged("empty", lambda d: (d / "models" / "retrain.pt")
                                                       .write_bytes(b""))]),
        ("audit: a method's model truncated", ["audit", damaged("trunc", lambda d: (d / "models" / "finetune.pt")
                                                                .write_bytes((d / "models" / "finetune.pt")
                                                                             .read_bytes()[:100]))]),
        ("report: summary.json corrupt", ["report", damaged("summary", lambda d: (d / "summary.json")
                                                            .write_text("{,"))]),
        ("report: per_client.csv missing", ["report", damaged("pc", lambda d: (d / "per_client.csv").unlink())]),
        ("resume: not a run directory", ["run", "--resume", str(tmp)]),
        ("mistyped command", ["rn"]),
        ("Ray address nobody answers at", ["run", *TINY_SET, "--set", 'sim.backend="ray"', "--ray-address",
                                           "127.0.0.1:1", "--out", str(tmp / "ray-bad")]),
        ("client resources no node has", ["run", *TINY_SET, "--set", 'sim.backend="ray"', "--set", "sim.num_cpus=64",
                                          "--out", str(tmp / "ray-cpus")]),
    ]


def _the_line(output: str) -> str:
    """The message a user reads: the ``error:`` or ``failed:`` line, or the text of click's error box."""
    text = " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())
    for tag in ("error:", "failed:"):
        if tag in text:
            return tag + text.split(tag, 1)[1].split(" wall time")[0].split(" results:")[0]
    return text.split(" Error ", 1)[-1]


def main() -> None:
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        res = runner.invoke(app, ["run", *TINY_SET, "--set", 'unlearn.methods=["retrain","finetune"]',
                                  "--out", str(tmp / "run")])
        assert res.exit_code == 0, res.output
        rows = []
        for what, argv in cases(tmp, tmp / "run"):
            out = runner.invoke(app, argv)
            line = _the_line(out.output).replace(str(tmp), "TMP").replace("|", "\\|")
            rows.append(f"| {what} | {out.exit_code} | {line} |")
            print(f"{out.exit_code}  {what}: {line[:150]}")
    text = ["# Bad input: what a user sees", "",
            "Every case below was run through the `fedunlearn` command by `experiments/bad_input_table.py`, which "
            "wrote this table from what the command printed (paths of the scratch directory shown as `TMP`). A "
            "config or data error is one line and exit code 2 and leaves no run directory; a failed audit input "
            "is one line (or, for a method's model, a `failed:` line and the method listed under "
            "`failed_methods`); a diverging training run stops in the round it diverges, exit code 1, resumable.",
            "", "| case | exit | what the command prints |", "|---|---:|---|", *rows, ""]
    (ROOT / "docs" / "bad-input.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
