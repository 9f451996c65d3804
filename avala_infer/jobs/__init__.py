"""Auto-label jobs: the runner (one job, committed per batch, resumable), the worker that takes jobs, and the
executors (``jobs.executors``) where a job's predictions run: this process's engine, or actors of a Ray cluster."""

from avala_infer.jobs.runner import JobRunner
from avala_infer.jobs.worker import Worker

__all__ = ["JobRunner", "Worker"]
