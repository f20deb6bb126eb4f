"""The Flower ServerApp: waits for every node, maps node ids to partitions, then runs all FL phases of the
experiment (original training, each unlearning method, the retrain oracle) in this one simulation.

``make_app(session)`` builds the app for one experiment's ``Session`` (``fedunlearn.engine.session``): under
``fedunlearn run`` the session carries the prepared run; under ``flwr run .`` (``fedunlearn.flwr_app``) it carries no
config, the app reads the experiment path from ``[tool.flwr.app.config]``, prepares the run once the federation
checks pass, and hands it to the session's ``on_finished`` (the pipeline's audit and report). Under ``fedunlearn
run`` the ServerApp stops when it is asked to (a signal) or when Flower's runtime has ended, so that it never
outlives the runtime and never keeps the process from exiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from fedunlearn.config.load import load_config
from fedunlearn.engine.phases import Phases
from fedunlearn.engine.session import Session, build_server_context, prepare_run
from fedunlearn.errors import ConfigError, FedUnlearnError
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


def make_app(session: Session) -> ServerApp:
    """A ServerApp for one experiment's session. Errors of a session that has its config (``fedunlearn run``) come
    back in ``session.error`` for the caller's thread, and the app stops when asked to (a signal) or when Flower's
    runtime has ended (``Session.check_stop``, checked while it waits for replies); those of ``flwr run .`` are
    raised to Flower, as one line."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        standalone = session.cfg is None
        if standalone:  # `flwr run .`: the experiment file comes from the app config
            logging.getLogger("flwr").addFilter(ONE_LINE_ERRORS)
        if hasattr(grid, "pull_interval"):  # InMemoryGrid (run_simulation); other grids poll on their own terms
            grid.pull_interval = PULL_INTERVAL_S
        check = None if standalone else session.check_stop
        if check is not None:
            stop_aware(grid, check)
        try:
            cfg = session.cfg or load_config(str(context.run_config.get("experiment", "experiments/quickstart.toml")))
            nodes = wait_for_nodes(grid, cfg.data.clients, check=check)
            if len(nodes) != cfg.data.clients:
                raise ConfigError(f"data.clients = {cfg.data.clients} but the Flower federation has {len(nodes)} "
                                  f'nodes; run `flwr run . --federation-config "num-supernodes={cfg.data.clients}"` '
                                  "(or set data.clients)")
            run_dir = session.run_dir or prepare_run(cfg)  # nothing is written before the checks pass
            ctx, initial = build_server_context(cfg, run_dir, progress=session.progress)
            fed = FlowerFederation(ctx, grid, map_partitions(grid, nodes))
            ctx.startup_s = time.perf_counter() - session.started  # Ray and the node mapping: a ledger row of its own
            session.failed = Phases(fed, initial).run()
            if session.on_finished is not None:
                session.on_finished(run_dir, session.failed)
        except BaseException as err:  # hand the error to the caller's thread
            if standalone:
                raise
            session.error = err

    return app
