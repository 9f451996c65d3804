"""The local executor: the job's engine runs in this process, on this host's device (what a worker always did)."""

from __future__ import annotations


class LocalExecutor:
    name = "local"

    def load(self, model: str, device: str):
        """An :class:`~avala_infer.engine.Engine` of ``model`` on ``device`` (loaded now)."""
        from avala_infer.engine import Engine

        return Engine(model, device=device)

    def close(self) -> None:
        """Nothing to release beyond the engines (the runner closes those)."""
