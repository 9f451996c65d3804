"""Auto-label jobs, the tasks each job has finished with, and the results (automatic drafts) they wrote.

Durability rests on two rules. A job's progress for a batch (its results, its ``job_tasks`` rows, the task
statuses, its counters) commits in one transaction, so a crash loses at most the batch in flight and never
half of one. A job is held by one worker at a time through a lease (``worker``, ``lease_until``) taken and
renewed in ``BEGIN IMMEDIATE`` transactions: a second worker can take it only when the lease has run out or
its holder, on this host, is dead; the first then finds it lost the lease at its next commit and stops.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from avala_infer.errors import ConfigError, LeaseLost, NotFoundError
from avala_infer.store.base import Repository, new_uid, page, page_args, row_dict
from avala_infer.store.db import now_iso, transaction
from avala_infer.store.events import EventRepository
from avala_infer.store.items import ItemRepository
from avala_infer.store.projects import ProjectRepository
from avala_infer.store.results import ResultRepository
from avala_infer.store.workers import holder_is_dead
from avala_infer.types import AGGREGATIONS, ModelType

JOB_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
JOB_EVENT_FIELDS = ("uid", "model_type", "model", "status", "dry_run", "total_items", "processed_items",
                    "successful_items", "failed_items", "skipped_items", "error_message")  # fmt: skip
BOOLEAN_JOB_FIELDS = ("dry_run", "cancel_requested", "overwrite")  # 0/1 stored; true booleans in dicts, payloads
# where a job's predictions run (jobs/executors); None: wherever the worker that claims it runs them
JOB_EXECUTORS = ("local", "ray")


def _job_booleans(job: dict[str, Any]) -> dict[str, Any]:
    for key in BOOLEAN_JOB_FIELDS:
        if key in job:
            job[key] = bool(job[key])
    return job


def _check_labels(labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise ConfigError(f"labels must be a list of label names, e.g. ['car', 'person'], got {labels!r}")
    names = [str(x).strip() for x in labels]
    if any(not name for name in names):
        raise ConfigError(f"labels must be non-empty names, got {list(labels)!r}")
    return names


def _check_aggregation(aggregation: str | None, model_type: str) -> str | None:
    if aggregation is None:
        return None
    if model_type != ModelType.NAMED_ENTITY_RECOGNITION.value:
        raise ConfigError(f"aggregation applies to named_entity_recognition jobs only, not {model_type}; leave it out")
    name = str(aggregation).strip().lower()
    if name not in AGGREGATIONS:
        raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    return name


def _check_executor(executor: str | None) -> str | None:
    if executor is None:
        return None
    name = str(executor).strip().lower()
    if name not in JOB_EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(JOB_EXECUTORS)} (None: the worker's), got {executor!r}")
    return name


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """A stable hash of the settings that change a job's results: sha256 of their canonical JSON (sorted keys,
    no spaces), 16 hex digits. Equal settings, equal fingerprint, whatever the order they were given in."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def job_settings(job: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``job`` that change its results (what its fingerprint hashes): the model and its type,
    the confidence threshold, the labels asked for (sorted; None: the project's ontology), the project's label
    map for the model, the NER aggregation. Per-label thresholds and the IoU are not job settings (yet): they
    are the engine's defaults for every job."""
    return {
        "model": job["model"],
        "model_type": job["model_type"],
        "confidence_threshold": round(float(job["confidence_threshold"]), 6),
        "labels": sorted(job["labels"]) or None,
        "label_map": job.get("label_map") or None,
        "aggregation": job.get("aggregation"),
    }


class JobRepository(Repository):
    """``store.jobs``: create, read, cancel; the worker's side (claim, lease, record a batch, finish); the counts
    a job's summary reports. A batch writes results (``results``), ``job_tasks`` rows, task statuses (``items``)
    and the job's counters in one transaction."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str | Path,
        *,
        events: EventRepository,
        projects: ProjectRepository,
        items: ItemRepository,
        results: ResultRepository,
    ) -> None:
        super().__init__(conn, path)
        self.events = events
        self.projects = projects
        self.items = items
        self.results = results

    # ------------------------------------------------------------------ create, read, cancel
    def create(
        self,
        project_uid: str,
        *,
        model_type: str,
        confidence_threshold: float = 0.5,
        labels: Sequence[str] | None = None,
        dry_run: bool = False,
        aggregation: str | None = None,
        overwrite: bool = False,
        executor: str | None = None,
    ) -> dict[str, Any]:
        """A pending job. ``executor`` (``local`` or ``ray``; None: the worker's own) is where its predictions
        run, whichever worker claims it; it changes no result, so it is not a setting of the fingerprint.
        ``aggregation`` (NER jobs only: ``none``, ``simple``, ``first``, ``average``, ``max``)
        is how tokens become entities; None keeps the engine's default (``first``, whole words).

        The job takes the project's model for ``model_type`` and its label map now, and its settings fingerprint
        (:func:`job_settings`): a real job skips the tasks that hold a result of the same model with the same
        fingerprint, unless ``overwrite``."""
        project = self.projects.get(project_uid)
        model_type = ModelType.parse(model_type).value
        model = project["models"].get(model_type)
        if model is None:
            configured = ", ".join(project["models"]) or "none"
            raise ConfigError(
                f"project {project_uid} has no model for {model_type} (configured: {configured}); set one with "
                f"`avala-infer projects update {project_uid} --model {model_type}=MODEL` or "
                f"client.projects.update(..., models={{{model_type!r}: 'MODEL'}})"
            )
        try:
            confidence_threshold = float(confidence_threshold)
        except (TypeError, ValueError):
            raise ConfigError(
                f"confidence_threshold must be a number between 0 and 1, got {confidence_threshold!r}"
            ) from None
        if not 0.0 <= confidence_threshold <= 1.0:
            raise ConfigError(f"confidence_threshold must be between 0 and 1, got {confidence_threshold}")
        labels = _check_labels(labels)
        aggregation = _check_aggregation(aggregation, model_type)
        executor = _check_executor(executor)
        label_map = project["label_maps"].get(model_type) or None
        fingerprint = settings_fingerprint(job_settings({
            "model": model, "model_type": model_type, "confidence_threshold": confidence_threshold,
            "labels": labels, "label_map": label_map, "aggregation": aggregation}))  # fmt: skip
        uid, now = new_uid("job"), now_iso()
        with transaction(self.conn):
            total = self.items.count_tasks(project_uid)
            self.conn.execute(
                "INSERT INTO jobs (uid, project_uid, model_type, model, confidence_threshold, labels, dry_run, "
                "aggregation, label_map, settings_hash, overwrite, total_items, created_at, executor) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, project_uid, model_type, model, confidence_threshold, json.dumps(labels), int(dry_run),
                 aggregation, json.dumps(label_map) if label_map else None, fingerprint, int(bool(overwrite)),
                 total, now, executor),
            )  # fmt: skip
        return self.get(uid)

    def get(self, uid: str) -> dict[str, Any]:
        """The job row, its booleans as booleans; an unknown uid is a NotFoundError."""
        return _job_booleans(self._one("jobs", uid, "auto-label job", "`avala-infer auto-label list` shows them"))

    def list(self, *, project: str | None = None, limit: int | None = None, cursor: str | None = None):
        """A page of jobs (of ``project`` when given), oldest first: (rows, next cursor or None)."""
        limit, after = page_args(limit, cursor)
        sql, args = "SELECT * FROM jobs WHERE id > ?", [after]
        if project is not None:
            sql += " AND project_uid = ?"
            args.append(project)
        rows, next_cursor = page(self.conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit + 1)).fetchall(), limit)
        return [_job_booleans(job) for job in rows], next_cursor

    def request_cancel(self, uid: str) -> dict[str, Any]:
        """A pending job is cancelled at once; a running one when its worker next commits (within one batch)."""
        with transaction(self.conn):
            row = self.conn.execute("SELECT status FROM jobs WHERE uid = ?", (uid,)).fetchone()
            if row is None:
                raise NotFoundError(f"no auto-label job {uid!r}; `avala-infer auto-label list` shows them")
            if row["status"] == "pending":
                self.conn.execute(
                    "UPDATE jobs SET status = 'cancelled', cancel_requested = 1, completed_at = ? WHERE uid = ?",
                    (now_iso(), uid),
                )
            elif row["status"] == "running":
                self.conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE uid = ?", (uid,))
            else:
                raise ConfigError(f"job {uid} is already {row['status']}; only pending or running jobs cancel")
        return self.get(uid)

    # ------------------------------------------------------------------ the worker's side
    def claim(self, worker: str, lease_s: float, only: str | None = None) -> dict[str, Any] | None:
        """Take the oldest pending job, or a running one whose holder is gone; None when there is none."""
        with transaction(self.conn):
            sql = "SELECT uid, status, worker, lease_until FROM jobs WHERE status IN ('pending', 'running')"
            args: list[Any] = []
            if only is not None:
                sql += " AND uid = ?"
                args.append(only)
            now = time.time()
            for row in self.conn.execute(sql + " ORDER BY id", args).fetchall():
                held = row["status"] == "running" and (row["lease_until"] or 0) > now
                if held and not holder_is_dead(row["worker"]):
                    continue
                self.conn.execute(
                    "UPDATE jobs SET status = 'running', worker = ?, lease_until = ?, attempts = attempts + 1, "
                    "started_at = COALESCE(started_at, ?) WHERE uid = ?",
                    (worker, now + lease_s, now_iso(), row["uid"]),
                )
                break
            else:
                return None
        return self.get(row["uid"])

    def remaining_tasks(self, job: dict[str, Any], chunk: int = 256) -> Iterator[dict[str, Any]]:
        """The project's tasks this job has not finished with, in task order, each with ``same_result``: the uid
        of a result of the job's model made with the job's settings fingerprint (a real job keeps it and skips
        the task), or None (always None for an ``overwrite`` job). Read in chunks."""
        after = 0
        fingerprint = None if job.get("overwrite") else job.get("settings_hash")
        while True:
            rows = self.conn.execute(
                "SELECT t.id, t.uid AS task_uid, i.key, i.path, i.text, "
                "(SELECT r.uid FROM results r WHERE r.task_uid = t.uid AND r.model = ? AND r.settings_hash = ? "
                "ORDER BY r.id DESC LIMIT 1) AS same_result "
                "FROM tasks t JOIN items i ON i.uid = t.item_uid "
                "WHERE t.project_uid = ? AND t.id > ? "
                "AND NOT EXISTS (SELECT 1 FROM job_tasks j WHERE j.job_uid = ? AND j.task_uid = t.uid) "
                "ORDER BY t.id LIMIT ?",
                (job["model"], fingerprint, job["project_uid"], after, job["uid"], chunk),
            ).fetchall()
            if not rows:
                return
            yield from (dict(r) for r in rows)
            after = rows[-1]["id"]

    def record_batch(
        self, job: dict[str, Any], worker: str, outcomes: Sequence[dict[str, Any]], lease_s: float
    ) -> bool:
        """Commit one batch: ``outcomes`` are dicts with task_uid, outcome, error, label_counts and (a real job's
        successes) annotations, or (a skipped task) ``result_uid``, the identical result the job keeps. Results,
        job_tasks rows, task statuses and counters in one transaction; the lease is renewed. Returns whether a
        cancel was requested. Raises :class:`LeaseLost` if the job is not ours."""
        now = now_iso()
        with transaction(self.conn):
            self._check_lease(job["uid"], worker)
            for o in outcomes:
                new_result = o.get("annotations") is not None
                result_uid = new_uid("res") if new_result else o.get("result_uid")
                label_counts = o.get("label_counts")
                if label_counts is None and result_uid is not None:  # a kept result: the counts it was made with
                    label_counts = self._kept_label_counts(o["task_uid"], result_uid)
                inserted = self.conn.execute(
                    "INSERT OR IGNORE INTO job_tasks (job_uid, task_uid, outcome, error, label_counts, result_uid) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (job["uid"], o["task_uid"], o["outcome"], o.get("error"), json.dumps(label_counts or {}),
                     result_uid),
                ).rowcount  # fmt: skip
                if not inserted or not new_result:
                    continue
                self.results.insert_draft(
                    job, o["task_uid"], result_uid, o["annotations"], o.get("label_counts", {}), now
                )
                self.items.mark_labeled(o["task_uid"], now)
            counts = dict(
                self.conn.execute(
                    "SELECT outcome, COUNT(*) FROM job_tasks WHERE job_uid = ? GROUP BY outcome", (job["uid"],)
                ).fetchall()
            )
            processed = sum(counts.values())
            self.conn.execute(
                "UPDATE jobs SET processed_items = ?, successful_items = ?, failed_items = ?, skipped_items = ?, "
                "total_items = MAX(total_items, ?), lease_until = ? WHERE uid = ?",
                (processed, counts.get("succeeded", 0), counts.get("failed", 0), counts.get("skipped", 0), processed,
                 time.time() + lease_s, job["uid"]),
            )  # fmt: skip
            return bool(
                self.conn.execute("SELECT cancel_requested FROM jobs WHERE uid = ?", (job["uid"],)).fetchone()[0]
            )

    def renew_lease(self, uid: str, worker: str, lease_s: float) -> bool:
        """Extend ``worker``'s lease on a running job; False when the job is no longer its own."""
        with transaction(self.conn):
            return bool(
                self.conn.execute(
                    "UPDATE jobs SET lease_until = ? WHERE uid = ? AND worker = ? AND status = 'running'",
                    (time.time() + lease_s, uid, worker),
                ).rowcount
            )

    def _check_lease(self, uid: str, worker: str) -> None:
        row = self.conn.execute("SELECT status, worker FROM jobs WHERE uid = ?", (uid,)).fetchone()
        if row is None or row["status"] != "running" or row["worker"] != worker:
            raise LeaseLost(f"job {uid} is no longer held by {worker}")

    def finish(
        self,
        job: dict[str, Any],
        worker: str,
        status: str,
        *,
        error_message: str | None = None,
        summary: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if status not in FINISHED:
            raise ValueError(f"a job finishes as one of {FINISHED}, not {status!r}")
        with transaction(self.conn):
            self._check_lease(job["uid"], worker)
            self.conn.execute(
                "UPDATE jobs SET status = ?, error_message = ?, summary = ?, completed_at = ?, lease_until = NULL "
                "WHERE uid = ?",
                (status, error_message, json.dumps(summary) if summary is not None else None, now_iso(), job["uid"]),
            )
            if status in ("completed", "failed"):
                row = self.conn.execute("SELECT * FROM jobs WHERE uid = ?", (job["uid"],)).fetchone()
                data = _job_booleans({k: row[k] for k in JOB_EVENT_FIELDS})
                self.events.emit(f"auto_label.{status}", project_uid=job["project_uid"],
                                 task_types=[job["model_type"]], data={"job": data})  # fmt: skip
        return self.get(job["uid"])

    def _kept_label_counts(self, task_uid: str, result_uid: str) -> dict[str, int]:
        """The label counts recorded by the job that made ``result_uid`` (a job that keeps an identical result
        counts its labels too, so its ``summary["per_label"]`` covers every task it holds)."""
        row = self.conn.execute(
            "SELECT label_counts FROM job_tasks WHERE task_uid = ? AND result_uid = ? AND outcome = 'succeeded' "
            "LIMIT 1",
            (task_uid, result_uid),
        ).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

    def label_counts(self, uid: str) -> dict[str, int]:
        """Annotations per label over everything the job recorded (summed in SQL, flat in memory)."""
        rows = self.conn.execute(
            "SELECT e.key, SUM(e.value) FROM job_tasks j, json_each(j.label_counts) e WHERE j.job_uid = ? "
            "GROUP BY e.key ORDER BY SUM(e.value) DESC",
            (uid,),
        ).fetchall()
        return {key: int(total) for key, total in rows}

    def failures(self, uid: str, limit: int = 20) -> list[dict[str, Any]]:
        """Up to ``limit`` of the job's failed tasks: task_uid, the item's key, the error."""
        rows = self.conn.execute(
            "SELECT j.task_uid, i.key, j.error FROM job_tasks j JOIN tasks t ON t.uid = j.task_uid "
            "JOIN items i ON i.uid = t.item_uid WHERE j.job_uid = ? AND j.outcome = 'failed' LIMIT ?",
            (uid, limit),
        ).fetchall()
        return [dict(r) for r in rows]

    def with_results(self, project_uid: str) -> list[dict[str, Any]]:
        """The project's real (not dry-run) jobs that hold results (made, or identical ones kept), oldest first."""
        rows = self.conn.execute(
            "SELECT * FROM jobs j WHERE j.project_uid = ? AND j.dry_run = 0 AND EXISTS (SELECT 1 FROM job_tasks jt "
            "WHERE jt.job_uid = j.uid AND jt.result_uid IS NOT NULL) ORDER BY j.id",
            (project_uid,),
        ).fetchall()
        return [_job_booleans(row_dict(r)) for r in rows]
