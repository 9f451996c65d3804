"""Run one auto-label job: the engine over the project's tasks the job has not finished with, committed per batch.

What a job labels: every task of its project, except (real jobs only, unless ``overwrite``) tasks that hold a
result of the job's model made with the same settings (the job's settings fingerprint: threshold, labels, label
map, aggregation), which count as skipped and whose result the job keeps as its own; so re-running a finished
configuration labels nothing twice, and a job with other settings labels every task again. The project's label
map for the model (``models={"object_detection": {"model": ..., "label_map": {...}}}``) renames, merges or drops
model classes first, as ``label --map``. The label filter is then the job's ``labels`` when given, else the
ontology of the job's model type when it has one, else every (mapped) model label (and that type's ontology
becomes those labels). ``labels`` outside the ontology are added to it, so exports keep stable class ids.
A prompted model's job (an open-vocabulary detector: labels are text) looks for the job's ``labels``: they are
its engine's vocabulary (``Engine(vocabulary=)``), one engine kept per model and vocabulary.
A dry run writes previews into ``<home>/jobs/<job uid>/preview/`` and no results; its counters still advance.
An NER job's ``aggregation`` (None: the engine's default, ``first``) is how its tokens become entities.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from avala_infer.annotations import Prediction
from avala_infer.engine.pipeline import is_prompted
from avala_infer.engine.sources import Item
from avala_infer.errors import AvalaInferError, ConfigError
from avala_infer.exporters.base import aborting_on_error, close_sinks
from avala_infer.jobs.executors.local import LocalExecutor
from avala_infer.specs import find_spec
from avala_infer.store import LeaseLost, Store, register_worker, unregister_worker
from avala_infer.store.projects import type_ontology

log = logging.getLogger(__name__)

COMMIT_SECONDS = 2.0  # a batch commits when it reaches the engine's batch size, or after this long
PREVIEW_COUNT = 50


def _close_engine(engine: Any) -> None:
    close = getattr(engine, "close", None)  # Engine.close() frees the model's memory where the engine has one
    if close is not None:
        try:
            close()
        except Exception:  # a failing close must not take the worker down
            log.exception("closing the engine of %s failed", getattr(engine, "name", engine))


def _outcome(task_uid: str, prediction: Prediction, keep_results: bool) -> dict[str, Any]:
    from avala_infer.exporters.records import prediction_to_record

    if not prediction.ok:
        return {"task_uid": task_uid, "outcome": "failed", "error": prediction.error}
    counts = collections.Counter(str(name) for name in prediction.result.class_name)
    outcome = {"task_uid": task_uid, "outcome": "succeeded", "label_counts": dict(counts)}
    if keep_results:
        record = prediction_to_record(prediction)
        record.pop("source", None)
        record.pop("text", None)  # the item holds it
        outcome["annotations"] = record
    return outcome


def _vocabulary(job: dict[str, Any]) -> tuple[str, ...] | None:
    """The job's ``labels`` when its model is prompted (they are what it looks for), else None."""
    if not job["labels"]:
        return None
    try:
        prompted = is_prompted(find_spec(job["model"]))
    except AvalaInferError:  # a model (or backend) only the executor's machines have (a Ray cluster): its labels
        return None  # filter, as before
    if not prompted:
        return None
    return tuple(str(name).strip() for name in job["labels"])


class JobRunner:
    """Runs jobs for one worker; keeps the ``max_engines`` models it used last loaded between jobs (loading a model
    is the slow part), closing the least recently used one when it needs room for another.

    Its worker id counts as live in this process (a claim made here waits out its leases) until :meth:`close`;
    use it as a context manager, or call :meth:`close` when the worker stops.
    """

    def __init__(
        self,
        store: Store,
        worker: str,
        *,
        device: str = "auto",
        lease_s: float = 60.0,
        max_engines: int = 1,
        executor: Any = None,
    ) -> None:
        if int(max_engines) < 1:
            raise ConfigError(f"max_engines must be at least 1 (models kept loaded per device), got {max_engines}")
        self.store = store
        self.worker = worker
        self.device = device
        self.lease_s = lease_s
        self.max_engines = int(max_engines)
        # what computes the predictions (jobs/executors: this process's engine, or Ray actors); commits stay here
        self.executor = executor if executor is not None else LocalExecutor()
        self.engines: collections.OrderedDict[str, Any] = collections.OrderedDict()  # least recently used first
        register_worker(worker)

    def engine(self, model: str, vocabulary: tuple[str, ...] | None = None):
        """The engine of ``model`` (with ``vocabulary``: a prompted model's labels), loaded now unless it is among
        the ones kept (then it becomes the newest)."""
        key = model if vocabulary is None else (model, vocabulary)
        if key in self.engines:
            self.engines.move_to_end(key)
            return self.engines[key]
        while len(self.engines) >= self.max_engines:  # free the device before the next model loads
            _, evicted = self.engines.popitem(last=False)
            _close_engine(evicted)
        self.engines[key] = self.executor.load(model, self.device, vocabulary=vocabulary)
        return self.engines[key]

    def close(self) -> None:
        """Close the engines kept and stop counting this worker as live (its running jobs can be taken over)."""
        while self.engines:
            _close_engine(self.engines.popitem(last=False)[1])
        unregister_worker(self.worker)

    def __enter__(self) -> JobRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, job: dict[str, Any], should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any] | None:
        """Run ``job`` (claimed by this worker) to its end; returns the finished job, or None when the lease was
        lost or the worker was asked to stop (the job stays running, to be resumed).

        A heartbeat thread renews the lease every third of it while the job runs, so a model that loads (or a
        batch that runs) longer than the lease does not let another worker take the job.
        """
        done = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(job["uid"], done), daemon=True)
        heartbeat.start()
        try:
            return self._run(job, should_stop)
        except LeaseLost as exc:
            log.warning("%s", exc)
            return None
        except AvalaInferError as exc:  # the model cannot load, labels are unknown, the store is unwritable...
            log.error("job %s failed: %s", job["uid"], exc)
            return self._fail(job, str(exc))
        except Exception as exc:  # a job-level fault we did not foresee: fail the job, keep the worker
            log.exception("job %s failed", job["uid"])
            return self._fail(job, f"{type(exc).__name__}: {exc}")
        finally:
            done.set()
            heartbeat.join()

    def _heartbeat(self, uid: str, done: threading.Event) -> None:
        store = Store(self.store.home)  # its own connection: the job's thread holds the other
        try:
            while not done.wait(self.lease_s / 3) and store.jobs.renew_lease(uid, self.worker, self.lease_s):
                pass
        except Exception as exc:  # the store went away: the next commit finds out too
            log.warning("lease heartbeat of job %s stopped: %s", uid, exc)
        finally:
            store.close()

    def _fail(self, job: dict[str, Any], message: str) -> dict[str, Any] | None:
        try:
            return self.store.jobs.finish(job, self.worker, "failed", error_message=message)
        except (LeaseLost, AvalaInferError, OSError) as exc:
            log.error("cannot record the failure of job %s: %s", job["uid"], exc)
            return None

    def _filter_labels(self, job: dict[str, Any], engine) -> list[str] | None:
        project = self.store.projects.get(job["project_uid"])
        ontology = type_ontology(project, job["model_type"])
        if job["labels"]:
            keep = job["labels"]
        elif ontology:
            mapped = engine.build_filter(label_map=job.get("label_map")).output_labels  # the model's, mapped
            keep = [name for name in mapped if name in ontology]
            if not keep:
                raise ConfigError(
                    f"none of {job['model']}'s labels{' (mapped)' if job.get('label_map') else ''} are in project "
                    f"{project['uid']}'s {job['model_type']} ontology ({', '.join(ontology)}); add them to the "
                    "ontology or pass labels="
                )
        else:
            keep = None
        return keep

    def _run(self, job: dict[str, Any], should_stop: Callable[[], bool]) -> dict[str, Any] | None:
        started = time.perf_counter()
        vocabulary = _vocabulary(job)
        engine = self.engine(job["model"], vocabulary)
        if engine.model_type.value != job["model_type"]:
            raise ConfigError(
                f"the project's {job['model_type']} model {job['model']!r} is a {engine.model_type.value} model"
            )
        if vocabulary is None:  # a prompted model's labels are this job's, not the model's
            self.store.projects.record_model_labels(job["model"], engine.labels)  # for label checks at job creation
        extra = {"aggregation": job["aggregation"]} if job.get("aggregation") else {}
        options = engine.predict_options(
            confidence_threshold=job["confidence_threshold"],
            labels=self._filter_labels(job, engine),
            label_map=job.get("label_map"),
            **extra,
        )
        if not job["dry_run"]:
            self.store.projects.extend_ontology(
                job["project_uid"], options.label_filter.output_labels, job["model_type"]
            )
        cancel = self.store.jobs.record_batch(job, self.worker, [], self.lease_s)  # renews the lease after loading
        if cancel:
            return self.store.jobs.finish(job, self.worker, "cancelled", summary={"model": job["model"]})
        sinks = self._dry_run_sinks(job, engine, options) if job["dry_run"] else []
        keep_results = not job["dry_run"]
        task_of: dict[int, str] = {}
        skipped: list[dict[str, Any]] = []

        def items() -> Iterator[Item]:
            for seq, task in enumerate(self.store.jobs.remaining_tasks(job)):
                if keep_results and task["same_result"]:
                    kept = task["same_result"]  # the identical result: this job's too (exports of --job find it)
                    skipped.append({"task_uid": task["task_uid"], "outcome": "skipped", "result_uid": kept})
                    continue
                task_of[seq] = task["task_uid"]
                source = task["path"] if task["path"] is not None else f"<text {task['key']}>"
                yield Item(seq, source, task["key"], text=task["text"])

        pending: list[dict[str, Any]] = []
        last_commit = time.monotonic()
        done = 0
        from avala_infer.exporters.summary import at_requested, dry_run_options

        # a dry run predicts at a low floor for its gallery; its counts keep what the job's threshold keeps; its
        # preview (the last sink) draws the pictures the pipeline decoded
        stream = engine.stream(
            items(),
            dry_run_options(options, engine.model_type) if job["dry_run"] else options,
            on_image=sinks[-1].take_image if job["dry_run"] else None,
        )
        with aborting_on_error(sinks):  # a job that fails leaves no half-written preview files
            try:
                for prediction in stream:
                    kept = at_requested(prediction, options.label_filter)
                    pending.append(_outcome(task_of.pop(prediction.index), kept, keep_results))
                    for sink in sinks:
                        sink.write(prediction)
                    done += 1
                    if len(pending) >= engine.batch_size or time.monotonic() - last_commit > COMMIT_SECONDS:
                        cancel = self.store.jobs.record_batch(job, self.worker, pending + skipped, self.lease_s)
                        pending, skipped[:] = [], []
                        last_commit = time.monotonic()
                        if cancel or should_stop():
                            break
            finally:
                stream.close()
            if not cancel and not should_stop():
                cancel = self.store.jobs.record_batch(job, self.worker, pending + skipped, self.lease_s)
        files = [str(path) for path in close_sinks(sinks)]
        if should_stop() and not cancel:
            return None  # left running: the next worker resumes it
        wall = time.perf_counter() - started
        summary = {
            "model": job["model"],
            "per_label": self.store.jobs.label_counts(job["uid"]),
            "labels": list(options.label_filter.output_labels),
            "throughput_items_per_s": round(done / max(wall, 1e-9), 2),
            "wall_s": round(wall, 3),
            "failures": self.store.jobs.failures(job["uid"]),
            "executor": self.executor.name,
        }
        if job["dry_run"]:
            summary["preview"] = next((f for f in files if f.endswith("index.html")), None)
        return self.store.jobs.finish(job, self.worker, "cancelled" if cancel else "completed", summary=summary)

    def _dry_run_sinks(self, job: dict[str, Any], engine, options) -> list:
        """A dry run's sinks: its summary, then its preview gallery."""
        from avala_infer.exporters.preview import PreviewWriter
        from avala_infer.exporters.summary import SummaryCollector

        out = Path(self.store.home) / "jobs" / job["uid"]
        settings = {"model": job["model"], "model_type": job["model_type"], "dry_run": True,
                    "confidence_threshold": job["confidence_threshold"], "labels": job["labels"] or None,
                    "project_uid": job["project_uid"]}  # fmt: skip
        if job["model_type"] == "named_entity_recognition":
            settings["aggregation"] = options.aggregation
        summary = SummaryCollector(out, options.label_filter.output_labels, settings, options.label_filter, True)
        return [summary, PreviewWriter(out, summary, PREVIEW_COUNT)]
