"""``fedunlearn sweep SWEEP.toml``: expand, plan (skip / resume / run), run the points on one Ray cluster with one
progress display, then write the aggregates, the frontier plots and ``sweep.md``.

The sweep directory (``sweeps/<name>`` or ``--out``): ``sweep.toml`` (the sweep file as given), ``configs/<point>.toml``
(each point's experiment: ``fedunlearn run configs/<point>.toml`` reruns it alone), one run directory per point,
``logs/<point>.log`` (its driver's output), ``points.json`` (status, times, exit codes), ``sweep.csv``,
``sweep_summary.csv``, ``plots/`` and ``sweep.md``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedunlearn.config.render import to_toml
from fedunlearn.errors import ConfigError
from fedunlearn.io import atomic_write_json, atomic_write_text
from fedunlearn.sweep import aggregate, frontier
from fedunlearn.sweep.cluster import LocalRayHead
from fedunlearn.sweep.launch import PointPool, PointRun, plan
from fedunlearn.sweep.lock import HEAD, SweepLock
from fedunlearn.sweep.spec import Sweep, fl_trainings, load_sweep


@dataclass
class SweepResult:
    sweep_dir: Path
    runs: list[PointRun]
    outputs: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[PointRun]:
        return [r for r in self.runs if r.status != "finished"]


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def print_plan(console: Console, sweep: Sweep, runs: list[PointRun]) -> None:
    table = Table(title=f"sweep {sweep.name}: {len(runs)} points")
    for col in ("point", "action", "FL trainings", "rounds each"):
        table.add_column(col, justify="left" if col in ("point", "action") else "right")
    todo = 0
    for r in runs:
        n = fl_trainings(r.point.cfg)
        todo += n if r.action != "skip" else 0
        table.add_row(r.point.name, r.action, str(n), str(r.point.cfg.train.rounds))
    console.print(table)
    skip = sum(r.action == "skip" for r in runs)
    console.print(f"to do: {len(runs) - skip} points ({skip} finished, skipped), about {todo} full FL trainings "
                  "(original, retrain, RMIA references, retrain null, A2 replicas; the methods cost less)")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the drivers and the head are stopped either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _scale(sweep_runs: list[PointRun], parallel: int, local_cpus: int | None) -> int:
    """How many points share the cluster at once, checked against this machine when the sweep owns the head."""
    ray_runs = [r for r in sweep_runs if r.action == "run" and r.point.cfg.sim.backend == "ray"]
    scale = max(1, min(parallel, len(ray_runs)))
    if local_cpus is not None and ray_runs:
        need = max(r.point.cfg.sim.num_cpus for r in ray_runs) * scale
        if need > local_cpus:
            raise ConfigError(f"--parallel: {scale} points side by side need {need:g} CPUs for their client actors "
                              f"(sim.num_cpus x points), this machine has {local_cpus}; allowed: --parallel <= "
                              f"{max(1, int(local_cpus // max(r.point.cfg.sim.num_cpus for r in ray_runs)))}")
    return scale


def run_sweep(path: str | Path, out: str | Path | None = None, resume: bool = False, dry_run: bool = False,
              parallel: int = 1, ray_address: str | None = None, console: Console | None = None,
              retries: int = 1) -> SweepResult:
    """Run (or continue) a sweep; returns its directory and every point's outcome."""
    console = console or Console()
    if parallel < 1:
        raise ConfigError(f"--parallel: {parallel} not allowed; allowed: 1 or more points at once")
    if retries < 0:
        raise ConfigError(f"--retries: {retries} not allowed; allowed: 0 or more")
    sweep = load_sweep(path)
    sweep_dir = Path(out) if out else Path("sweeps") / sweep.name
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ConfigError(f"--out: {sweep_dir} is a file; allowed: a directory")
    if not resume and not dry_run and sweep_dir.is_dir() and any(sweep_dir.iterdir()):
        raise ConfigError(f"--out: {sweep_dir} exists and is not empty; continue it with --resume")
    runs = plan(sweep.points, sweep_dir)
    if dry_run:
        print_plan(console, sweep, runs)
        return SweepResult(sweep_dir, runs)
    scale = _scale(runs, parallel, None if ray_address else _cpus())
    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = SweepLock(sweep_dir)
    for name in lock.acquire():
        console.print(f"stopped {name}, left running by an earlier sweep that was killed")
    try:
        with _sigterm_as_interrupt():
            _run_points(sweep, sweep_dir, runs, parallel, scale, ray_address, lock, console, retries)
            outputs = write_outputs(sweep, sweep_dir, runs)
    finally:
        _write_points(sweep_dir, runs)
        lock.release()
    return SweepResult(sweep_dir, runs, outputs)


def _write_points(sweep_dir: Path, runs: list[PointRun]) -> None:
    atomic_write_json(sweep_dir / "points.json", [r.record() for r in runs])


def _run_points(sweep: Sweep, sweep_dir: Path, runs: list[PointRun], parallel: int, scale: int,
                ray_address: str | None, lock: SweepLock, console: Console, retries: int) -> None:
    atomic_write_text(sweep_dir / "sweep.toml", sweep.path.read_text(encoding="utf-8"))
    for r in runs:
        atomic_write_text(sweep_dir / "configs" / f"{r.point.name}.toml", to_toml(r.point.cfg))
    _write_points(sweep_dir, runs)
    todo = [r for r in runs if r.action != "skip"]
    if not todo:
        console.print(f"all {len(runs)} points finished; writing the aggregates")
        return
    needs_ray = any(r.point.cfg.sim.backend == "ray" for r in todo)
    head = LocalRayHead(_cpus()) if needs_ray and not ray_address else None
    mutex = threading.Lock()
    with contextlib.ExitStack() as stack:
        if head is not None:
            console.print(f"starting a local Ray head ({head.num_cpus} CPUs) for {len(todo)} points")
            stack.callback(lock.remove, HEAD)  # runs after the head stopped (LIFO), so the lock never misses it
            stack.enter_context(head)
            lock.add(HEAD, head.proc.pid, head.temp_dir)  # type: ignore[union-attr]
        address = head.address if head is not None else (ray_address or "")
        live = console.is_terminal
        progress = Progress(TextColumn("[bold]points"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.description}"), console=console, disable=not live)
        stack.enter_context(progress)
        task = progress.add_task("", total=len(runs), completed=len(runs) - len(todo))

        def on_change(r: PointRun) -> None:
            with mutex:
                _write_points(sweep_dir, runs)
                if r.status in ("finished", "failed"):
                    mark = "[green]done[/]" if r.status == "finished" else f"[red]failed[/] ({r.error})"
                    progress.console.print(f"{r.point.name}: {mark} in {r.wall_s:.0f} s", highlight=False,
                                           soft_wrap=True)
                elif r.status == "running" and not live:
                    console.print(f"{r.point.name}: {r.action} started", highlight=False)

        def tick() -> None:
            running = [r.point.name for r in runs if r.status == "running"]
            progress.update(task, completed=sum(r.status in ("finished", "failed") for r in runs),
                            description="running: " + ", ".join(running) if running else "")

        pool = PointPool(runs, sweep_dir, parallel, scale, address, lock, on_change, head=head, retries=retries,
                         say=lambda line: progress.console.print(line, highlight=False, soft_wrap=True))
        pool.run(tick)


def write_outputs(sweep: Sweep, sweep_dir: Path, runs: list[PointRun]) -> list[Path]:
    """The aggregates over every finished point: sweep.csv, sweep_summary.csv, plots/, sweep.md."""
    finished = [r.point.name for r in runs if r.status == "finished"]
    results = aggregate.load_results(sweep, sweep_dir, finished)
    rows = aggregate.summarize(sweep, results)
    outputs = [aggregate.write_sweep_csv(sweep, results, sweep_dir / "sweep.csv"),
               aggregate.write_summary_csv(sweep, rows, sweep_dir / "sweep_summary.csv")]
    plots = frontier.write_plots(sweep, rows, sweep_dir / "plots") if rows else {}
    outputs += [p for ps in plots.values() for p in ps]
    outputs.append(frontier.write_report(sweep, rows, plots, [r.record() for r in runs], sweep_dir / "sweep.md"))
    return outputs
