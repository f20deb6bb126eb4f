"""The Flower ServerApp: waits for every node, maps node ids to partitions, then runs all FL phases of the
experiment (original training, each unlearning method, the retrain oracle) in this one simulation.

Under ``fedunlearn run`` ``fedunlearn.simulation`` builds an app for its prepared run (``make_app(job)``); under
``flwr run .`` the module's ``app`` reads the experiment path from ``[tool.flwr.app.config]`` and does the whole run
itself.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedunlearn.config import load_config
from fedunlearn.errors import ConfigError
from fedunlearn.experiment import Phases
from fedunlearn.runner import build_server_context, finish_run, prepare_run
from fedunlearn.simulation import SimulationJob
from strategies.federation import FlowerFederation, map_partitions, wait_for_nodes

log = logging.getLogger(__name__)
#: seconds between reply polls of Flower's in-memory grid (its default, 0.1 s, adds ~0.05 s to every round)
PULL_INTERVAL_S = 0.01


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
            cfg = load_config(str(context.run_config.get("experiment", "experiments/quickstart.toml")))
        else:
            cfg = job.cfg
        if hasattr(grid, "pull_interval"):  # InMemoryGrid (run_simulation); other grids poll on their own terms
            grid.pull_interval = PULL_INTERVAL_S
        try:
            nodes = wait_for_nodes(grid, cfg.data.clients)
            if len(nodes) != cfg.data.clients:
                raise ConfigError(f"data.clients = {cfg.data.clients} but the federation has {len(nodes)} nodes; "
                                  f'run `flwr run . --federation-config "num-supernodes={cfg.data.clients}"`')
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
