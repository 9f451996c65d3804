"""The local executor: the job's engine runs in this process, on this host's device (what a worker always did)."""

from __future__ import annotations


class LocalExecutor:
    name = "local"

    def load(self, model: str, device: str, *, vocabulary: tuple[str, ...] | None = None):
        """An :class:`~avala_infer.engine.Engine` of ``model`` on ``device`` (loaded now); ``vocabulary``: a
        prompted model's labels."""
        from avala_infer.engine import Engine

        return Engine(model, device=device, vocabulary=vocabulary)

    def close(self) -> None:
        """Nothing to release beyond the engines (the runner closes those)."""
