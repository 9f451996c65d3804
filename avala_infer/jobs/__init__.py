"""Auto-label jobs: the runner (one job, committed per batch, resumable) and the worker that takes jobs."""

from avala_infer.jobs.runner import JobRunner
from avala_infer.jobs.worker import Worker

__all__ = ["JobRunner", "Worker"]
