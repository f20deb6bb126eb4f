"""The Flower ServerApp: waits for every node, maps node ids to partitions, then runs all FL phases of the
experiment (original training, each unlearning method, the retrain oracle) in this one simulation.

Under ``fedunlearn run`` ``fedunlearn.simulation`` builds an app for its prepared run (``make_app(job)``); under
``flwr run .`` the module's ``app`` reads the experiment path from ``[tool.flwr.app.config]`` and does the whole run
itself.

Under ``fedunlearn run`` the ServerApp stops when it is asked to (a signal) or when Flower's runtime has ended
(``SimulationJob.check_stop``, checked while it waits for replies), so that it never outlives the runtime and never
keeps the process from exiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from fedunlearn.config import load_config
from fedunlearn.errors import ConfigError, FedUnlearnError
from fedunlearn.experiment import Phases
from fedunlearn.runner import build_server_context, finish_run, prepare_run
from fedunlearn.simulation import SimulationJob
from strategies.federation import FlowerFederation, map_partitions, wait_for_nodes

log = logging.getLogger(__name__)
#: seconds between reply polls of Flower's in-memory grid (its default, 0.1 s, adds ~0.05 s to every round)
PULL_INTERVAL_S = 0.01


class OneLineErrors(logging.Filter):
    """Flower logs a failed ServerApp with its traceback. A ``FedUnlearnError`` (bad input, a federation of the
    wrong size) is explained by its message, so under ``flwr run`` it is logged as that one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if isinstance(err, FedUnlearnError):
            record.msg, record.args = f"fedunlearn: {err}", ()
            record.exc_info, record.exc_text = None, None
        return True


ONE_LINE_ERRORS = OneLineErrors()


def stop_aware(grid: Grid, check: Callable[[], None]) -> None:
    """``grid.send_and_receive`` as Flower's (push, then pull until every reply is in or ``timeout``), calling
    ``check`` between pulls: waiting for replies is where the ServerApp spends its time, so a stop is seen there
    within one pull interval. Patched on the instance, so Flower's strategies use it too."""
    interval = getattr(grid, "pull_interval", 0.1)

    def send_and_receive(messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        waiting = set(grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(grid.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting or (end is not None and time.monotonic() >= end):
                break
            check()
            time.sleep(interval)
        return replies

    grid.send_and_receive = send_and_receive  # type: ignore[method-assign]


def make_app(job: SimulationJob | None = None) -> ServerApp:
    """A ServerApp for one prepared run (``fedunlearn run``: ``job`` carries the config, the run directory and the
    progress display, and takes back the failed methods or the error), or, with ``job = None``, the app of
    ``flwr run .``, which reads the experiment path from ``[tool.flwr.app.config]`` and does the whole run itself.
    The job is bound to this app, not handed over through module state."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        standalone = job is None
        if standalone:  # `flwr run .`: the experiment file comes from the app config
            logging.getLogger("flwr").addFilter(ONE_LINE_ERRORS)
            cfg = load_config(str(context.run_config.get("experiment", "experiments/quickstart.toml")))
        else:
            cfg = job.cfg
        if hasattr(grid, "pull_interval"):  # InMemoryGrid (run_simulation); other grids poll on their own terms
            grid.pull_interval = PULL_INTERVAL_S
        check = job.check_stop if job else None
        if check is not None:
            stop_aware(grid, check)
        try:
            nodes = wait_for_nodes(grid, cfg.data.clients, check=check)
            if len(nodes) != cfg.data.clients:
                raise ConfigError(f"data.clients = {cfg.data.clients} but the Flower federation has {len(nodes)} "
                                  f'nodes; run `flwr run . --federation-config "num-supernodes={cfg.data.clients}"` '
                                  "(or set data.clients)")
            run_dir = prepare_run(cfg) if standalone else job.run_dir  # nothing is written before the checks pass
            ctx, initial = build_server_context(cfg, run_dir, progress=job.progress if job else None)
            fed = FlowerFederation(ctx, grid, map_partitions(grid, nodes))
            failed = Phases(fed, initial).run()
            if job:
                job.failed = failed
            if standalone:
                finish_run(run_dir)
        except BaseException as err:  # hand the error to the caller's thread
            if job is None:
                raise
            job.error = err

    return app


#: the component `flwr run .` loads (pyproject [tool.flwr.app.components])
app = make_app()
