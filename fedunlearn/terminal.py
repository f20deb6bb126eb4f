"""What the CLI shows while and after a run (rich): a console sized for terminals and logs, the result tables of
``fedunlearn.stages.tables``, and the progress of the FL phases and the audit.

On a terminal, progress is rich bars; piped or logged output (not a TTY) gets one plain line per finished phase
group instead (a live bar would print nothing useful there). A phase that stops before its planned rounds
(lightweight's or mia_loss's stop rules) is closed as stopped, not left at 1/3.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedunlearn.stages.tables import ResultTable

#: width of piped or logged output without ``COLUMNS``: the result tables are laid out to fit it
LOG_WIDTH = 100
#: progress groups that count something other than FL rounds
UNITS = {"audit": "steps"}


def make_console(file: IO[str] | None = None, environ: Mapping[str, str] | None = None,
                 stderr: bool = False) -> Console:
    """A console at the terminal's width; piped, at ``COLUMNS`` when set (rich reads it), else ``LOG_WIDTH``."""
    stream = file or (sys.stderr if stderr else sys.stdout)
    env = os.environ if environ is None else environ
    tty = hasattr(stream, "isatty") and stream.isatty()
    width = None if tty or env.get("COLUMNS", "").strip().isdigit() else LOG_WIDTH
    return Console(file=file, stderr=stderr, width=width, _environ=dict(env))


def rich_table(table: ResultTable) -> Table:
    """A ``ResultTable`` for the terminal: light rules (two characters between columns), titles wrap, cells fold
    rather than being cut with an ellipsis."""
    out = Table(title=table.title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                title_justify="left", caption="; ".join(table.notes) or None, caption_justify="left")
    for i, h in enumerate(table.header):
        out.add_column(h, justify="left" if i in table.text else "right", overflow="fold")
    for row in table.rows:
        out.add_row(*row)
    return out


@dataclass
class _Phase:
    done: int = 0
    total: int = 0
    task: TaskID | None = None


class PhaseProgress:
    """The run's progress callback ``(phase, round, total)``: a bar per phase on a terminal, a line per finished
    group elsewhere. A group is a phase's first dotted part (``mia_loss.unlearn`` and ``mia_loss.repair`` are
    ``mia_loss``); it finishes when another group reports or the run ends. ``total`` 0 = not known in advance."""

    def __init__(self, console: Console, live: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.clock = clock
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console) if self.live else None
        self.group: str | None = None
        self.phases: dict[str, _Phase] = {}
        self.last = self.started = clock()

    def __enter__(self) -> PhaseProgress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close_group()
        if self.progress is not None:
            self.progress.stop()

    def stop(self) -> None:
        """Stop the live display at once (an interrupt: the resume line must not be drawn over)."""
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, phase: str, rnd: int, total: int) -> None:
        group = phase.split(".")[0]
        if group != self.group:
            self.close_group()
            self.group, self.started = group, self.last
        st = self.phases.setdefault(phase, _Phase())
        st.done, st.total = max(st.done, rnd), max(st.total, total, 0)
        if self.progress is not None:
            if st.task is None:
                st.task = self.progress.add_task(phase, total=st.total or None)
            self.progress.update(st.task, completed=st.done, total=st.total or None)
        self.last = self.clock()

    def close_group(self) -> None:
        """Finish the running group: bars that stopped early are completed at the round they reached (and say so);
        off a terminal, one line sums the group up."""
        if self.group is None:
            return
        unit = UNITS.get(self.group, "rounds")
        parts = []
        for phase, st in self.phases.items():
            stopped = f" (stopped at {st.done} of {st.total})" if 0 < st.done < st.total else ""
            if self.progress is not None and st.task is not None:
                self.progress.update(st.task, total=st.done, completed=st.done, description=phase + stopped)
            name = phase[len(self.group) + 1:] if phase != self.group else ""
            count = f"{st.done}/{st.total}" if st.total and not stopped else str(st.done)
            units = unit[:-1] if count == "1" else unit
            parts.append(" ".join(x for x in (name, count, units + stopped) if x))
        if self.progress is None:
            self.console.print(f"{self.group}: {', '.join(parts)} ({self.last - self.started:.1f} s)",
                               highlight=False, soft_wrap=True)
        self.group, self.phases = None, {}
