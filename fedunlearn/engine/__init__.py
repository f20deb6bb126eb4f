"""The engine: the client runtime and ``handle()``, the in-process transport, the resumable FL phases, the session
of a run (prepare, restore), the A2 seed replicas."""
