"""The ServerApp ``flwr run .`` loads (``[tool.flwr.app.components]`` in pyproject.toml): the same pipeline steps as
``fedunlearn run``, with the experiment path from ``[tool.flwr.app.config]``: the ServerApp prepares the run and
runs the FL phases, then the pipeline's ``finish_run`` (A2 replicas, audit, report)."""

from __future__ import annotations

from fedunlearn.engine.session import Session
from fedunlearn.pipeline import finish_run
from strategies.server_app import make_app

app = make_app(Session(cfg=None, on_finished=finish_run))
