"""What a user sees of a run: the result tables (fit 100 columns, same cells on the terminal and in report.md), the
console width when piped, progress (plain lines off a TTY, bars closed when a phase stops early, federaser and the
audit included), and the plots (every file written, one colour per model in every plot)."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from rich.console import Console
from typer.testing import CliRunner

from fedunlearn.stages.palette import SEED_METHODS, model_color
from fedunlearn.stages.tables import client_auc_table, markdown, summary_tables
from fedunlearn.terminal import LOG_WIDTH, PhaseProgress, make_console, rich_table
from tests.conftest import TINY

ATTACKS = ["loss", "rmia", "difference"]
DEFAULT_MODELS = ["original", *SEED_METHODS, "retrain"]  # the README's default method list, plus original


def _leak(attack: str, k: int) -> dict:
    """Worst-case cell widths: the longest verdict words, negative deltas, a 3-digit CI."""
    return {"auc": 0.5 + k / 100, "auc_lo": 0.412, "auc_hi": 0.734, "distance_to_retrain": -0.123 if k % 2 else 0.087,
            "verdict": "under-unlearned" if k % 2 else "over-unlearned", "equivalence_margin": 0.097,
            "never_seen": None if attack == "difference" else "under-unlearned", "null_band": [0.416, 0.584]}


def _summary(models: list[str] = DEFAULT_MODELS, clients: int = 10) -> dict:
    entries = {}
    for k, m in enumerate(models):
        entries[m] = {"test_accuracy": 0.8321, "withdrawn_accuracy": 0.9, "retained_accuracy": 0.85,
                      "leakage": {a: _leak(a, k) for a in ATTACKS if not (m == "original" and a == "difference")}}
        if m != "original":
            entries[m]["cost"] = {"wall_s": 1234.56}
            entries[m]["speedup_vs_retrain"] = {"wall": 13.94, "client_samples": 32.91}
    return {"name": "t", "models": entries, "attacks": ATTACKS, "withdrawn_clients": [0], "null_band": [0.416, 0.584],
            "num_clients": clients}


def _per_client(summary: dict, clients: int) -> list[dict[str, str]]:
    return [{"model": m, "client": str(k), "attack": "loss", "auc": f"{0.6 + k / 1000 + 0.00049:.5f}"}
            for m in summary["models"] for k in range(clients)]


def _render(table, width: int) -> str:  # noqa: ANN001 - a ResultTable
    buf = StringIO()
    Console(width=width, file=buf, color_system=None).print(rich_table(table))
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 100, 120])
def test_result_tables_fit_without_cutting_a_cell(width: int) -> None:
    """Default methods, 3 attacks, 10 clients: nothing is cut with '…' at 80/100/120 columns; at 100 (the layout's
    target) every table fits on its own and each cell is printed whole on one line."""
    summary = _summary()
    tables = summary_tables(summary, "client(s) [0]")
    tables.append(client_auc_table(summary, _per_client(summary, 10), "loss", 24))
    assert len(tables) == 2 + len(ATTACKS)  # utility and cost, one per attack, per-client
    for table in tables:
        out = _render(table, width)
        assert "…" not in out
        assert max(len(line) for line in out.splitlines()) <= width
        if width >= 100:
            lines = out.splitlines()
            for row in table.rows:
                line = next(x for x in lines if x.startswith(row[0] + " "))
                assert all(cell in line for cell in row), (row, line)


def test_client_table_rounds_like_report_and_caps_rows() -> None:
    """AUC cells are rounded, not cut from the CSV string (0.60549 used to show as 0.605 beside a report's 0.605, and
    0.66496 as 0.664 beside 0.665); withdrawn first and marked; extra clients are counted in a note."""
    summary = _summary(["original", "retrain"], clients=30)
    rows = _per_client(summary, 30)
    rows[0]["auc"] = "0.66496"
    t = client_auc_table(summary, rows, "loss", max_clients=24)
    assert t.rows[0][:2] == ["0*", "0.665"] and len(t.rows) == 24
    assert "6 more clients in per_client.csv" in t.notes and "* withdrawn" in t.notes


def test_console_width_piped_honours_columns() -> None:
    assert make_console(file=StringIO(), environ={"COLUMNS": "90"}).width == 90
    assert make_console(file=StringIO(), environ={}).width == LOG_WIDTH == 100


def _feed(progress: PhaseProgress) -> None:
    for r in (1, 2, 3):
        progress("original", r, 3)
    progress("mia_loss.unlearn", 1, 0)      # a mixed round: total unknown
    progress("mia_loss.repair", 1, 3)       # stopped by mia_loss's check after 1 of 3
    progress("federaser.calibrate", 1, 2)
    progress("federaser.calibrate", 2, 2)
    for s in (1, 2):
        progress("audit", s, 2)


def test_progress_off_a_terminal_is_one_line_per_finished_group() -> None:
    buf = StringIO()
    console = Console(file=buf, width=100, color_system=None)
    with PhaseProgress(console) as progress:
        assert not progress.live
        _feed(progress)
    lines = [re.sub(r" \(\d+\.\d s\)$", "", x) for x in buf.getvalue().splitlines()]
    assert lines == ["original: 3/3 rounds", "mia_loss: unlearn 1 round, repair 1 round (stopped at 1 of 3)",
                     "federaser: calibrate 2/2 rounds", "audit: 2/2 steps"]


def test_progress_bars_on_a_terminal_end_complete() -> None:
    """A bar that stopped early (1 of 3) is completed at the round it reached and says so; none is left open."""
    console = Console(file=StringIO(), width=100, force_terminal=True)
    with PhaseProgress(console) as progress:
        assert progress.live
        _feed(progress)
    tasks = {t.description: t for t in progress.progress.tasks}
    assert set(tasks) == {"original", "mia_loss.unlearn", "mia_loss.repair (stopped at 1 of 3)",
                          "federaser.calibrate", "audit"}
    assert all(t.finished and t.completed == t.total for t in tasks.values())


def test_phase_round_by_round_reports_its_own_round(tiny_fed) -> None:  # noqa: ANN001 - conftest fixture
    """``MethodRounds.fedavg_round`` (lightweight, mia_loss's repair) reported every round as round 1 of n."""
    from fedunlearn.methods.mixed_round import MethodRounds

    calls = []
    tiny_fed.ctx.on_round = lambda *a: calls.append(a)
    rounds = MethodRounds(tiny_fed.job("finetune", tiny_fed.initial))
    w = tiny_fed.initial
    for r in (1, 2, 3):
        w = rounds.fedavg_round("repair", w, r, total=3)
    assert calls == [("finetune.repair", 1, 3), ("finetune.repair", 2, 3), ("finetune.repair", 3, 3)]


# ------------------------------------------------------------------ one tiny run through the CLI, piped


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[Path, str]:
    from fedunlearn import cli

    out = tmp_path_factory.mktemp("cli") / "run"
    args = ["run", *[x for t in TINY for x in ("--set", t)], "--set",
            'unlearn.methods=["retrain","finetune","mia_loss","federaser"]', "--set",
            f"audit.attacks={json.dumps(ATTACKS)}", "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "console", make_console(environ={"COLUMNS": "100"}))
        res = CliRunner().invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_cli_piped_progress_lines_and_tables(cli_run: tuple[Path, str]) -> None:
    _, output = cli_run
    lines = output.splitlines()
    groups = {x.split(":")[0] for x in lines if re.search(r"\(\d+\.\d s\)$", x)}
    assert {"original", "finetune", "mia_loss", "federaser", "retrain", "audit"} <= groups
    for x in lines:  # no progress left part-way: each a/b count is complete (early stops say so instead)
        for a, b in re.findall(r"(\d+)/(\d+) (?:rounds|steps)", x):
            assert a == b, x
    assert "…" not in output and max(len(x) for x in lines if not x.startswith("results:")) <= 100


def test_report_md_has_the_terminal_cells(cli_run: tuple[Path, str]) -> None:
    run_dir, output = cli_run
    summary = json.loads((run_dir / "summary.json").read_text())
    report = (run_dir / "report.md").read_text()
    from fedunlearn.stages.report import withdrawal_label

    for table in summary_tables(summary, withdrawal_label(summary)):
        for line in markdown(table):
            assert line in report
        for row in table.rows:
            assert any(x.startswith(row[0] + " ") and all(c in x for c in row) for x in output.splitlines()), row


def test_every_plot_is_written(cli_run: tuple[Path, str]) -> None:
    run_dir, _ = cli_run
    names = ["training_curves", "accuracy", "utility_vs_leakage", "roc_client0", "auc_heatmap"]
    names += [f"{p}_{a}" for a in ATTACKS for p in ("client_auc", "leakage_vs_cost", "roc_grid")]
    report = (run_dir / "report.md").read_text()
    for n in names:
        path = run_dir / "plots" / f"{n}.png"
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", n
        assert f"(plots/{n}.png)" in report, n


def test_palette_gives_a_model_one_colour_whatever_the_run() -> None:
    models = ["original", *SEED_METHODS, "retrain"]
    colours = [model_color(m) for m in models]
    assert len(set(colours)) == len(models)  # the default models are told apart
    assert model_color("pga") == model_color("pga") and model_color("reference_a") == model_color("retrain_null_2")
    assert model_color("my_method") == model_color("my_method") != model_color("reference_a")


def _legend_colours(fig) -> dict[str, str]:  # noqa: ANN001 - a matplotlib Figure
    """label -> colour of every legend entry (axes and figure legends) of ``fig``."""
    import numpy as np
    from matplotlib.container import BarContainer
    from matplotlib.lines import Line2D

    out = {}
    entries = [pair for ax in fig.axes for pair in zip(*ax.get_legend_handles_labels())]
    entries += [(h, t.get_text()) for leg in fig.legends for h, t in zip(leg.legend_handles, leg.get_texts())]
    for h, label in entries:
        if isinstance(h, BarContainer):
            colour = h.patches[0].get_facecolor()
        elif isinstance(h, Line2D):
            colour = h.get_color()
        else:  # a scatter's PathCollection, a band's patch
            colour = h.get_facecolor()
            colour = colour[0] if np.ndim(colour) == 2 else colour
        out[label] = to_hex(colour)
    return out


def test_every_plot_draws_a_model_in_its_palette_colour(cli_run: tuple[Path, str], monkeypatch) -> None:  # noqa: ANN001
    from fedunlearn.stages import plots, plots_audit, report

    run_dir, _ = cli_run
    figures = []

    def keep(fig, path):  # noqa: ANN001, ANN202
        figures.append((path.name, _legend_colours(fig)))

    monkeypatch.setattr(plots, "save_figure", keep)
    monkeypatch.setattr(plots_audit, "save_figure", keep)
    report.write_report(run_dir)
    models = list(json.loads((run_dir / "summary.json").read_text())["models"])
    checked = set()
    for name, colours in figures:
        for m in models:
            if m in colours:
                assert colours[m] == to_hex(model_color(m)), (name, m)
                checked.add(name)
    assert {"client_auc_loss.png", "accuracy.png", "utility_vs_leakage.png", "leakage_vs_cost_rmia.png",
            "roc_grid_loss.png", "roc_client0.png", "training_curves.png"} <= checked
