"""The ``fedunlearn`` command line (typer; the only module that uses it). Bad input: one line, exit code 2."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fedunlearn import interrupt
from fedunlearn.errors import ConfigError, FedUnlearnError
from fedunlearn.rundir import RunDir
from fedunlearn.terminal import PhaseProgress, make_console, rich_table

# suggest_commands=False: click already says "Did you mean ...?" (typer would say it a second time)
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated-unlearning simulator.",
                  suggest_commands=False)


def _version(value: bool) -> None:
    if value:
        from fedunlearn import __version__

        console.print(f"fedunlearn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Federated-unlearning simulator."""
console = make_console()  # a terminal's width; piped: COLUMNS, else 100 (the tables fit it)
err_console = make_console(stderr=True)


def _fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(2 if isinstance(err, ConfigError) else 1)


#: rows of the per-client table on the terminal (withdrawn clients first); every client is in per_client.csv
MAX_CLIENT_ROWS = 24


def _stopped_line(run_dir: Path, signum: int) -> None:
    """The one line an interrupted run ends with: how to continue it. Written straight to the stderr descriptor,
    so that it gets out before a forced ``os._exit`` and past the progress display."""
    name = signal.Signals(signum).name
    if (run_dir / "config.toml").is_file():
        line = f"interrupted ({name}); continue with: fedunlearn run --resume {run_dir}"
    else:
        line = f"interrupted ({name}) before {run_dir} was created; nothing to resume: run the same command again"
    os.write(2, (("\n" if sys.stderr.isatty() else "") + line + "\n").encode())


def _print_summary(summary: dict, run_dir: Path) -> None:
    """The result tables (utility and cost, one per attack, per-client AUC), the same cells as report.md's."""
    import csv

    from fedunlearn.stages.report import withdrawal_label
    from fedunlearn.stages.tables import client_auc_table, summary_tables

    for table in summary_tables(summary, withdrawal_label(summary)):
        console.print(rich_table(table))
        console.print()
    with RunDir(run_dir).per_client.open() as fh:
        rows = list(csv.DictReader(fh))
    console.print(rich_table(client_auc_table(summary, rows, summary["attacks"][0], MAX_CLIENT_ROWS)))
    console.print(f"results: [bold]{escape(str(run_dir))}[/] (report.md, per_client.csv, plots/)")


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="experiment TOML (defaults apply to every missing key)"),
    set_: list[str] = typer.Option([], "--set", help="override a key: --set data.clients=20 (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<name>-<time>)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue an interrupted run directory"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="same as --set data.data_dir=..."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help='join a Ray cluster ("auto" or host:port)'),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run one experiment: train, withdraw, unlearn, retrain, audit, report. Ctrl-C or SIGTERM stops it within
    seconds (exit 130 / 143) with the line that resumes it.

    CONFIG is the experiment's TOML file (e.g. experiments/quickstart.toml); without it the built-in defaults run,
    and --set overrides any key of either."""
    from fedunlearn.config.load import load_config
    from fedunlearn.rundir import default_run_dir

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    overrides = list(set_)
    overrides += [f'data.data_dir="{data_dir}"'] if data_dir else []
    overrides += [f'sim.ray_address="{ray_address}"'] if ray_address else []
    overrides += [f'sim.device="{device}"'] if device else []
    try:
        if resume is not None and (config is not None or overrides):
            raise ConfigError("--resume: takes the run directory's own config; drop CONFIG and --set")
        cfg = load_config(config, overrides) if resume is None else None
        if cfg is not None:  # before anything is started: the run directory can be made where asked
            from fedunlearn.rundir import check_out_dir, check_place

            if out is not None:
                check_out_dir(out)
            else:
                check_place(Path("runs"), "runs directory")
        from fedunlearn.engine.session import load_run_config  # torch and Ray's glue: after the config is valid
        from fedunlearn.pipeline import run as run_experiment

        if resume is None and config is None and console.is_terminal:  # someone at a terminal forgot CONFIG
            console.print("config: none given, running the built-in defaults (every key of "
                          "fedunlearn/config/schema.py) with --set; pass a TOML file to run an experiment of yours, "
                          "e.g. experiments/quickstart.toml", highlight=False, soft_wrap=True)
        cfg = cfg if cfg is not None else load_run_config(resume)
        run_dir = resume if resume is not None else (out or default_run_dir(cfg.name))  # named now: to say it
        with interrupt.handle_signals(lambda signum: _stopped_line(run_dir, signum)) as stopped, \
                PhaseProgress(console) as progress:

            def on_round(phase: str, rnd: int, total: int) -> None:
                interrupt.check()  # a stop asked for by a signal ends the run here, at a round's end
                progress(phase, rnd, total)

            try:
                result = run_experiment(cfg, out=None if resume is not None else run_dir, resume=resume,
                                        progress=on_round)
            except interrupt.Interrupted as stop:  # unwound at a boundary; the exit is the forced one's, sooner
                progress.stop()
                sys.stdout.flush()
                interrupt.force_exit(stop.signum, stopped)
    except FedUnlearnError as err:
        _fail(err)
        return
    _print_summary(result.summary, result.run_dir)
    _print_verdict_notes(result.summary)
    console.print(f"wall time {result.wall_s:.1f} s")


def _print_verdict_notes(summary: dict) -> None:
    """Below the method table: a class withdrawal's headline verdicts (forgotten-class accuracy against retrain's),
    and one line per method that could not be audited, with its reason (both are in summary.json and report.md)."""
    forget = {m: e["forget_class"] for m, e in summary["models"].items() if e.get("forget_class")}
    if forget:
        table = Table(title=f"Class withdrawal {summary.get('withdrawn_classes')}: accuracy on the forgotten "
                            "classes' members against retrain's (the headline verdict)")
        for col in ("model", "accuracy", "Δ retrain", "margin", "verdict"):
            table.add_column(col, justify="left" if col in ("model", "verdict") else "right")
        for m, f in forget.items():
            table.add_row(m, f"{f['accuracy']:.3f}", "—" if m == "retrain" else f"{f['delta']:+.3f}",
                          f"±{f['margin']:.3f}", f["verdict"])
        console.print(table)
    for m, why in (summary.get("failed_methods") or {}).items():
        console.print(f"[bold red]failed:[/] {escape(m)}: {escape(str(why))}", highlight=False, soft_wrap=True)


@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="sweep TOML: a base experiment plus axes (README: Sweeps)"),
    out: Optional[Path] = typer.Option(None, "--out", help="sweep directory (default sweeps/<name>)"),
    resume: bool = typer.Option(False, "--resume", help="continue: skip finished points, resume partial ones"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the points and the FL trainings; write nothing"),
    parallel: int = typer.Option(1, "--parallel", help="points run side by side on the Ray cluster"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help='join a Ray cluster ("auto" or '
                                              "host:port); default: a local head for the sweep"),
    retries: int = typer.Option(1, "--retries", help="resume a failed point this many more times"),
) -> None:
    """Run a grid of experiments (methods x budgets x seeds x ...) side by side on one Ray cluster; aggregate over
    seeds (sweep.csv, sweep_summary.csv), draw the leakage-vs-cost frontiers (sweep.md)."""
    from fedunlearn.sweep import run_sweep

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        result = run_sweep(spec, out=out, resume=resume, dry_run=dry_run, parallel=parallel,
                           ray_address=ray_address, console=console, retries=retries)
    except FedUnlearnError as err:
        _fail(err)
        return
    except KeyboardInterrupt:
        err_console.print(f"interrupted; continue with: fedunlearn sweep {spec} --resume"
                          + (f" --out {out}" if out else ""))
        raise typer.Exit(130) from None
    if dry_run:
        return
    for r in result.failed:
        err_console.print(f"point {r.point.name}: {r.status} ({r.error}); log: {result.sweep_dir}/logs/"
                          f"{r.point.name}.log", highlight=False)
    console.print(f"sweep: [bold]{result.sweep_dir}[/] (sweep.md, sweep.csv, sweep_summary.csv, plots/)")
    if result.failed:
        raise typer.Exit(1)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a finished run directory")) -> None:
    """Re-draw plots and report.md from saved results."""
    from fedunlearn.rundir import read_summary
    from fedunlearn.stages.report import write_report

    try:
        path = write_report(run_dir)  # checks summary.json and per_client.csv before drawing anything
        summary = read_summary(run_dir)
    except FedUnlearnError as err:
        _fail(err)
        return
    _print_summary(summary, run_dir)
    _print_verdict_notes(summary)
    console.print(f"wrote {path}")


@app.command()
def audit(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    attacks: Optional[str] = typer.Option(None, "--attacks", help="comma-separated attack names"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="A2 seed audit with M >= 3 seed replicas (trained "
                                        "in-process the first time: M times the FL cost); 0 = off; "
                                        "default: the run's audit.seeds"),
) -> None:
    """Re-audit a finished run from its saved models (cached signals: no retraining, seconds; --seeds M trains the
    A2 replicas once)."""
    from fedunlearn.engine.session import load_run_config

    try:
        cfg = load_run_config(run_dir)
        from fedunlearn.rundir import check_writable

        check_writable(run_dir, "run directory")
        if attacks:
            from fedunlearn.audit.attacks import ATTACKS

            for a in attacks.split(","):
                ATTACKS.get(a.strip(), "--attacks")
        from fedunlearn.stages.audit import run_audit
        from fedunlearn.stages.report import write_report
        from fedunlearn.stages.seed_replicas import seed_count

        m = seed_count(cfg, seeds)
        if m:  # the replicas step first (trained once, in-process); the audit then only reads saved models
            from fedunlearn.engine.replicas import train_seed_runs

            train_seed_runs(run_dir, m)
        with PhaseProgress(console) as progress:
            summary = run_audit(run_dir, [a.strip() for a in attacks.split(",")] if attacks else None, seeds=seeds,
                                progress=progress)
        write_report(run_dir)
    except FedUnlearnError as err:
        _fail(err)
        return
    _print_summary(summary, run_dir)
    _print_verdict_notes(summary)
    from fedunlearn.stages.merge import audit_line

    line = audit_line(summary.get("audit_run") or {})
    if line:
        console.print(escape(line), highlight=False, soft_wrap=True)


@app.command()
def methods(name: Annotated[Optional[str], typer.Argument(help="one method: its hyperparameters and departures")]
            = None) -> None:
    """List the unlearning methods: where their steps run and what they need (NAME: one method in detail)."""
    from fedunlearn.methods import METHODS

    if name is not None:
        try:
            cls = METHODS.get(name, "NAME")
        except ConfigError as err:
            _fail(err)
        _method_details(cls)
        return
    table = Table(title="Unlearning methods (\\[unlearn.<name>] sets their hyperparameters; "
                        "`fedunlearn methods NAME` for details)")
    for col in ("name", "what it does", "runs on", "needs", "granularity", "paper"):
        table.add_column(col, overflow="fold")
    for key, cls in METHODS.items():
        needs = [n for n, flag in (("forget data (in window)", cls.needs_forget_data),
                                    ("update history", cls.needs_history),
                                    ("remaining clients", cls.needs_remaining_clients)) if flag]
        where = "; ".join(f"{k}: {v}" for k, v in cls.where.items())
        table.add_row(key, cls.summary, where, ", ".join(needs) or "—", ", ".join(cls.granularity), cls.paper)
    console.print(table)


def _method_details(cls) -> None:  # noqa: ANN001 - an UnlearningMethod subclass
    """One method: paper, where each step runs, hyperparameters with defaults, departures from the paper."""
    console.print(f"[bold]{escape(cls.name)}[/bold] — {escape(cls.summary)}")
    console.print(f"paper: {escape(cls.paper)}")
    for k, v in cls.where.items():
        console.print(f"  {k}: {escape(v)}")
    table = Table(title=f"\\[unlearn.{cls.name}]")
    for col in ("key", "default", "meaning"):
        table.add_column(col, overflow="fold")
    for key, field in cls.Params.model_fields.items():
        table.add_row(key, escape(repr(field.default)), escape(field.description or ""))
    console.print(table)
    if cls.departures:
        console.print("departures from the paper / reference code, and fixes:")
        for line in cls.departures:
            console.print(f"  - {escape(line)}")


@app.command()
def datasets() -> None:
    """List the datasets a config can name."""
    from fedunlearn.data import describe_datasets

    table = Table(title="Datasets (data.dataset)")
    table.add_column("name")
    table.add_column("description", overflow="fold")
    for name, desc in describe_datasets():
        table.add_row(name, desc)
    console.print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted; continue with: fedunlearn run --resume RUN_DIR")
        sys.exit(130)


if __name__ == "__main__":
    main()
