"""The ``fedunlearn`` command line (typer; the only module that uses it). Bad input: one line, exit code 2."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedunlearn.errors import ConfigError, FedUnlearnError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated-unlearning simulator.")


def _version(value: bool) -> None:
    if value:
        from fedunlearn import __version__

        console.print(f"fedunlearn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Federated-unlearning simulator."""
console = Console(width=None if sys.stdout.isatty() else 140)  # logs and CI get the whole table
err_console = Console(stderr=True)


def _fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(2 if isinstance(err, ConfigError) else 1)


def _print_summary(summary: dict, run_dir: Path) -> None:
    from fedunlearn.stages.report import summary_table, withdrawal_label

    header, rows = summary_table(summary, compact=True)
    table = Table(title=f"{summary['name']}: withdrawn {withdrawal_label(summary)}, null band "
                        f"[{summary['null_band'][0]:.3f}, {summary['null_band'][1]:.3f}]")
    width = max(len(r[0]) for r in rows) if rows else 5
    for h in header:
        if h == "model":
            table.add_column(h, justify="left", no_wrap=True, min_width=width)
        else:
            table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    _print_client_table(run_dir, summary)
    console.print(f"results: [bold]{run_dir}[/] (report.md, per_client.csv, plots/)")


def _print_client_table(run_dir: Path, summary: dict) -> None:
    import csv

    with (run_dir / "per_client.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    attack = summary["attacks"][0]
    models = list(summary["models"])
    table = Table(title=f"Per-client {attack}-attack AUC (members vs the client's audit records)")
    table.add_column("client", justify="right")
    for m in models:
        table.add_column(m, justify="right")
    clients = sorted({int(r["client"]) for r in rows})
    for c in clients:
        cells = []
        for m in models:
            r = next((r for r in rows if r["model"] == m and int(r["client"]) == c and r["attack"] == attack), None)
            cells.append(r["auc"][:5] if r else "—")
        mark = " (withdrawn)" if c in summary["withdrawn_clients"] else ""
        table.add_row(f"{c}{mark}", *cells)
    console.print(table)


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
    """Run one experiment: train, withdraw, unlearn, retrain, audit, report."""
    from fedunlearn.config import load_config
    from fedunlearn.runner import run as run_experiment

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
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=False) as progress:
            tasks: dict[str, int] = {}

            def on_round(phase: str, rnd: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = progress.add_task(phase, total=total or None)
                progress.update(tasks[phase], completed=rnd)

            if resume is not None:
                from fedunlearn.runner import load_run_config

                cfg = load_run_config(resume)
            result = run_experiment(cfg, out=out, resume=resume, progress=on_round)  # type: ignore[arg-type]
    except FedUnlearnError as err:
        _fail(err)
        return
    _print_summary(result.summary, result.run_dir)
    console.print(f"wall time {result.wall_s:.1f} s")


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
    from fedunlearn.stages.report import write_report

    try:
        if not (run_dir / "summary.json").is_file():
            raise ConfigError(f"run directory: {run_dir} has no summary.json (not a finished fedunlearn run)")
        path = write_report(run_dir)
    except FedUnlearnError as err:
        _fail(err)
        return
    _print_summary(json.loads((run_dir / "summary.json").read_text()), run_dir)
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
    from fedunlearn.runner import load_run_config

    try:
        cfg = load_run_config(run_dir)
        if attacks:
            from fedunlearn.audit.attacks import ATTACKS

            for a in attacks.split(","):
                ATTACKS.get(a.strip(), "--attacks")
        from fedunlearn.stages.audit import run_audit
        from fedunlearn.stages.report import write_report
        from fedunlearn.stages.seed_replicas import seed_count

        m = seed_count(cfg, seeds)
        if m:  # the replicas step first (trained once, in-process); the audit then only reads saved models
            from fedunlearn.seeds import train_seed_runs

            train_seed_runs(run_dir, m)
        summary = run_audit(run_dir, [a.strip() for a in attacks.split(",")] if attacks else None, seeds=seeds)
        write_report(run_dir)
    except FedUnlearnError as err:
        _fail(err)
        return
    _print_summary(summary, run_dir)


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
