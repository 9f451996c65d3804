"""Executors: where a job's predictions are computed. ``local`` (the default) runs the engine in this process;
``ray`` runs it in actors of a Ray cluster (the optional extra ``avala-infer[ray]``). Either hands the job
runner an engine-like object (``model_type``, ``labels``, ``batch_size``, ``predict_options``, ``stream``,
``close``), so the runner labels, commits, cancels and resumes a job the same way whichever computes it."""

from __future__ import annotations

from typing import Any

from avala_infer.errors import ConfigError
from avala_infer.jobs.executors.local import LocalExecutor

EXECUTORS = ("local", "ray")


def make_executor(name: str | None = "local", *, address: str | None = None, concurrency: int | None = None) -> Any:
    """The executor called ``name``. ``address`` (ray: ``auto``, ``host:port`` or ``ray://host:10001``; None: the
    cluster ``RAY_ADDRESS`` names, else one started in this process) and ``concurrency`` (ray: actors; None: one
    per GPU of the cluster, else one per CPU) apply to ``ray`` only."""
    chosen = (name or "local").strip().lower()
    if chosen == "local":
        if address is not None or concurrency is not None:
            raise ConfigError("address and concurrency apply to the ray executor only (pass executor='ray')")
        return LocalExecutor()
    if chosen == "ray":
        from avala_infer.jobs.executors.ray import RayExecutor, check_installed

        check_installed()
        return RayExecutor(address=address, concurrency=concurrency)
    raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")


__all__ = ["EXECUTORS", "LocalExecutor", "make_executor"]
