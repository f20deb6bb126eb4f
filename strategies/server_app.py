"""The Flower ServerApp: waits for every node, maps node ids to partitions, then runs all FL phases of the
experiment (original training, each unlearning method, the retrain oracle) in this one simulation.

``make_app(session)`` builds the app for one experiment's ``Session`` (``fedunlearn.engine.session``): under
``fedunlearn run`` the session carries the prepared run; under ``flwr run .`` (``fedunlearn.flwr_app``) it carries no
config, the app reads the experiment path from ``[tool.flwr.app.config]``, prepares the run once the federation
checks pass, and hands it to the session's ``on_finished`` (the pipeline's audit and report).
"""

from __future__ import annotations

import logging
import time

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedunlearn.config.load import load_config
from fedunlearn.engine.phases import Phases
from fedunlearn.engine.session import Session, build_server_context, prepare_run
from fedunlearn.errors import ConfigError
from strategies.federation import FlowerFederation, map_partitions, wait_for_nodes

log = logging.getLogger(__name__)
#: seconds between reply polls of Flower's in-memory grid (its default, 0.1 s, adds ~0.05 s to every round)
PULL_INTERVAL_S = 0.01


def make_app(session: Session) -> ServerApp:
    """A ServerApp for one experiment's session. Errors of a session that has its config (``fedunlearn run``) come
    back in ``session.error`` for the caller's thread; those of ``flwr run .`` are raised to Flower."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        standalone = session.cfg is None
        try:
            cfg = session.cfg or load_config(str(context.run_config.get("experiment", "experiments/quickstart.toml")))
            if hasattr(grid, "pull_interval"):  # InMemoryGrid (run_simulation); other grids poll on their own terms
                grid.pull_interval = PULL_INTERVAL_S
            nodes = wait_for_nodes(grid, cfg.data.clients)
            if len(nodes) != cfg.data.clients:
                raise ConfigError(f"data.clients = {cfg.data.clients} but the federation has {len(nodes)} nodes; "
                                  f'run `flwr run . --federation-config "num-supernodes={cfg.data.clients}"`')
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
