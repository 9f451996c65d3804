"""The client's resources, named and shaped as the cloud SDK's (``avala.resources``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from avala_infer.client.types import LOCAL_OWNER, AutoLabelJob, CursorPage, Dataset, DatasetItem, Project, Task

if TYPE_CHECKING:
    from avala_infer.client import Avala
    from avala_infer.projects.imports import ImportReport


class _Resource:
    def __init__(self, client: Avala) -> None:
        self._client = client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call the store's ``"repository.method"`` (e.g. ``"projects.get"``) under the client's lock."""
        repository, _, name = method.partition(".")
        with self._client._lock:
            return getattr(getattr(self._client._store, repository), name)(*args, **kwargs)

    def _page(self, cls, method: str, *args: Any, **kwargs: Any) -> CursorPage:
        rows, next_cursor = self._call(method, *args, **kwargs)
        return CursorPage([cls.from_row(r) for r in rows], next_cursor, kwargs.get("cursor"))


DEFAULT_CONFIDENCE = 0.25  # as `avala-infer label` and ultralytics' predict (see the README)


def _model_name(entry: Any) -> Any:
    return entry.get("model") if isinstance(entry, Mapping) else entry


def _check_models(store, models: Mapping[str, Any] | None, data_type: str) -> None:
    """Refuse, before anything is stored, a model that no spec or weights file names, or one of another model
    type than the one it serves (its spec says; the weights are neither needed nor loaded), listing the names
    that would do; and a label map naming labels a model of known labels lacks."""
    if not isinstance(models, Mapping):
        return  # the store's checks say what is wrong with it
    from avala_infer.errors import ConfigError, UnknownModelError
    from avala_infer.specs import find_spec, scan_specs
    from avala_infer.types import ModelType

    for model_type, entry in models.items():
        name = _model_name(entry)
        if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
            continue
        parsed = ModelType.parse(model_type)
        if parsed.media != data_type:
            continue  # the store refuses it: a model of the other media
        wanted = parsed.value

        def valid(wanted: str = wanted) -> str:
            names = [e.spec.name for e in scan_specs() if e.spec is not None and e.spec.model_type.value == wanted]
            return ", ".join(dict.fromkeys(names)) or "none installed"

        try:
            spec = find_spec(str(name))
        except UnknownModelError:
            raise UnknownModelError(
                f"unknown model {str(name)!r} for {wanted}; {wanted} models: {valid()} (or a spec .yaml or "
                "weights path; `avala-infer models list` shows them all)"
            ) from None
        if spec.model_type.value != wanted:
            raise ConfigError(
                f"model {str(name)!r} is a {spec.model_type.value} model, not {wanted}; {wanted} models: {valid()}; "
                f"or set it as --model {spec.model_type.value}={name}"
            )
        label_map = entry.get("label_map") if isinstance(entry, Mapping) else None
        labels = _static_labels(store, str(name))
        if label_map and isinstance(label_map, Mapping) and labels is not None:
            from avala_infer.filters import build_filter

            build_filter(labels, label_map={k: (v or None) for k, v in label_map.items()})  # UnknownLabelError


def _static_labels(store, model: str) -> list[str] | None:
    """``model``'s labels without loading it: its spec's list, else those a job saw when it last loaded the
    model in this store; None when neither says (labels read from the weights, never loaded here)."""
    from avala_infer.engine.pipeline import is_prompted
    from avala_infer.errors import AvalaInferError
    from avala_infer.specs import find_spec

    try:
        spec = find_spec(model)
        if is_prompted(spec):  # a job's labels are what it looks for (its vocabulary): any text will do
            return None
    except AvalaInferError:
        return None
    if not spec.labels_from_weights and not isinstance(spec.labels, str):
        return [str(x) for x in spec.labels]
    return store.projects.model_labels(model)


def _check_job_labels(store, project: dict[str, Any], model_type: str, labels: Any) -> None:
    """Refuse ``labels`` that neither the model (after the project's label map) nor the model type's ontology
    knows, with close matches ("Car" -> "car"). When the model's labels cannot be known before it loads (read
    from its weights, and no job loaded it here yet), the job checks them when it starts."""
    from avala_infer.store.projects import type_ontology
    from avala_infer.types import ModelType

    if labels is None or isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        return  # the store refuses a string (never split into letters) or a non-list
    model_type = ModelType.parse(model_type).value
    model = project["models"].get(model_type)
    model_labels = None if model is None else _static_labels(store, model)
    if model_labels is None:
        return
    from avala_infer.errors import UnknownLabelError
    from avala_infer.filters import build_filter

    label_map = project["label_maps"].get(model_type)
    mapped = build_filter(model_labels, label_map=label_map).output_labels
    known = list(dict.fromkeys([*mapped, *type_ontology(project, model_type)]))
    unknown = [str(x).strip() for x in labels if str(x).strip() not in known]
    if not unknown:
        return
    import difflib

    lowered = {name.lower(): name for name in known}
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)
        if close:
            hints.append(f"{name!r} -> did you mean {' or '.join(repr(lowered[c]) for c in close)}?")
    raise UnknownLabelError(
        f"unknown label(s) {unknown} for project {project['uid']}'s {model_type} model {model}"
        f"{' (after its label map)' if label_map else ''}; "
        + (" ".join(hints) + " " if hints else "")
        + f"labels it knows: {', '.join(known)}"
    )


class Projects(_Resource):
    def create(
        self,
        name: str,
        *,
        data_type: str = "image",
        ontology: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        labels: Sequence[str] | None = None,
        models: Mapping[str, Any] | None = None,
    ) -> Project:
        """A project with its dataset. ``ontology`` (or ``labels``) lists label names, whose positions are the
        class ids of exports (a list: every model type's; ``{model_type: [...]}``: per type; with none, each
        type's first job fills its own). ``models`` maps a model type to the model (name, spec or weights path)
        that serves it, e.g. ``{"object_detection": "yolo11n"}``, or to ``{"model": "yolo11n", "label_map":
        {"person": "pedestrian"}}`` to rename, merge (two labels, one name) or drop (None) model classes as
        ``label --map`` does. An unknown model, or one of another type, is refused here."""
        with self._client._lock:
            _check_models(self._client._store, models, data_type)
        return Project.from_row(
            self._call("projects.create", name, data_type=data_type, ontology=ontology or labels, models=models)
        )

    def get(self, uid: str) -> Project:
        return Project.from_row(self._call("projects.get", uid))

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> CursorPage[Project]:
        return self._page(Project, "projects.list", limit=limit, cursor=cursor)

    def update(
        self,
        uid: str,
        *,
        name: str | None = None,
        ontology: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        models: Mapping[str, Any] | None = None,
    ) -> Project:
        """``ontology``: a list replaces every model type's; ``{model_type: [...]}`` sets those types'.
        ``models``: the entries given (as for :meth:`create`) replace those of their model types."""
        with self._client._lock:
            if models is not None:
                _check_models(self._client._store, models, self._client._store.projects.get(uid)["data_type"])
        return Project.from_row(self._call("projects.update", uid, name=name, ontology=ontology, models=models))

    def extend_ontology(self, uid: str, labels: Sequence[str], *, model_type: str | None = None) -> Project:
        """Append the ``labels`` the ontology lacks (ids of existing labels never change); returns the project.
        With ``model_type``, that type's own ontology; without, the default and every type's own list."""
        self._call("projects.extend_ontology", uid, list(labels), model_type)
        return self.get(uid)

    def import_items(
        self,
        uid: str,
        sources: Iterable[Any] | str | os.PathLike,
        *,
        text_field: str = "text",
        per_line: bool = False,
    ) -> ImportReport:
        """Import files, folders, globs or manifests (texts for a text project) as items with a task each."""
        from avala_infer.projects.imports import import_sources

        with self._client._lock:
            return import_sources(self._client._store, uid, sources, text_field=text_field, per_line=per_line)

    def export(
        self,
        uid: str,
        out: str | os.PathLike,
        formats: Sequence[str] = ("jsonl",),
        *,
        model_type: str | None = None,
        model: str | None = None,
        mask_format: str = "rle",
        job: str | None = None,
        ls_root: str | os.PathLike | None = None,
        ls_url_prefix: str | None = None,
    ) -> list:
        """Write the project's stored results (automatic drafts) in ``formats`` into ``out``; class ids are the
        ontology's positions. Each task's newest result by default; with ``job``, that job's results. Returns
        the files written. ``ls_root`` / ``ls_url_prefix``: where Label Studio tasks point for their images (as
        ``avala-infer export --ls-root`` / ``--ls-url-prefix``)."""
        from pathlib import Path

        from avala_infer.projects.exports import export_project

        with self._client._lock:
            return export_project(
                self._client._store,
                uid,
                Path(out),
                list(formats),
                model_type,
                mask_format,
                model=model,
                job=job,
                ls_root=ls_root,
                ls_url_prefix=ls_url_prefix,
            )


class Datasets(_Resource):
    def list(self, *, limit: int | None = None, cursor: str | None = None) -> CursorPage[Dataset]:
        return self._page(Dataset, "items.list_datasets", limit=limit, cursor=cursor)

    def get(self, uid: str) -> Dataset:
        return Dataset.from_row(self._call("items.get_dataset", uid))

    def list_items(self, uid: str, *, limit: int | None = None, cursor: str | None = None) -> CursorPage[DatasetItem]:
        return self._page(DatasetItem, "items.list", uid, limit=limit, cursor=cursor)

    def get_by_slug(self, owner: str, slug: str) -> Dataset:
        """The dataset ``owner/slug`` (the SDK's ``datasets.get_by_slug``); the one local owner is ``local``."""
        _check_owner(owner, slug)
        return Dataset.from_row(self._call("items.get_dataset_by_slug", slug))

    def get_item(self, owner: str, slug: str, item_uid: str) -> DatasetItem:
        """Item ``item_uid`` of the dataset ``owner/slug`` (the SDK's ``datasets.get_item``)."""
        dataset = self.get_by_slug(owner, slug)
        item = self.item(item_uid)
        if item.dataset != dataset.uid:
            from avala_infer.errors import NotFoundError

            raise NotFoundError(f"dataset {owner}/{slug} holds no item {item_uid!r}; list_items shows its items")
        return item

    def item(self, uid: str) -> DatasetItem:
        """The item ``uid``, whichever dataset holds it (its ``path`` is the imported file, None for a text)."""
        return DatasetItem.from_row(self._call("items.get_item", uid))


def _check_owner(owner: str, slug: str) -> None:
    if owner != LOCAL_OWNER:
        from avala_infer.errors import NotFoundError

        raise NotFoundError(f"no dataset {owner}/{slug}: every local dataset's owner is {LOCAL_OWNER!r}")


class Tasks(_Resource):
    def list(
        self,
        *,
        project: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> CursorPage[Task]:
        return self._page(Task, "items.list_tasks", project=project, status=status, limit=limit, cursor=cursor)

    def get(self, uid: str) -> Task:
        return Task.from_row(self._call("items.get_task", uid))

    def results(self, uid: str) -> list[dict[str, Any]]:
        """The automatic draft results of a task (one per model that labeled it)."""
        return self._call("results.for_task", uid)


class AutoLabelJobs(_Resource):
    def create(
        self,
        project_uid: str,
        *,
        model_type: str | None = None,
        confidence_threshold: float | None = None,
        labels: Sequence[str] | None = None,
        dry_run: bool | None = None,
        aggregation: str | None = None,
        overwrite: bool | None = None,
        executor: str | None = None,
    ) -> AutoLabelJob:
        """Queue a job over the project's tasks; the worker runs it. ``model_type`` defaults to the project's
        only configured model type; ``confidence_threshold`` to 0.25 (as ``avala-infer label``). ``labels``
        must be known to the model (after the project's label map) or the ontology: unknown ones are refused
        here, with close matches. ``aggregation`` (NER jobs only: ``none``, ``simple``, ``first``, ``average``,
        ``max``) is how tokens become entities; by default ``first``, whole words, as labeling tools expect.

        Tasks holding a result of the same model made with the same settings are skipped (their result is
        kept); other settings label every task again. ``overwrite=True`` relabels even those.

        ``executor`` is where its predictions run, whichever worker takes it: ``"local"`` (the worker's engine) or
        ``"ray"`` (actors of the Ray cluster ``RAY_ADDRESS`` names, or the worker's ``--address``; needs
        ``avala-infer[ray]``); None (the default) leaves it to the worker (``avala-infer worker --executor``).
        The results are the same either way."""
        project = self._call("projects.get", project_uid)
        if model_type is None:
            models = project["models"]
            if len(models) != 1:
                from avala_infer.errors import ConfigError

                raise ConfigError(f"pass model_type: project {project_uid} serves {', '.join(models) or 'none'}")
            model_type = next(iter(models))
        with self._client._lock:
            _check_job_labels(self._client._store, project, model_type, labels)
        row = self._call(
            "jobs.create",
            project_uid,
            model_type=model_type,
            confidence_threshold=DEFAULT_CONFIDENCE if confidence_threshold is None else confidence_threshold,
            labels=labels,
            dry_run=bool(dry_run),
            aggregation=aggregation,
            overwrite=bool(overwrite),
            executor=executor,
        )
        return AutoLabelJob.from_row(row)

    def get(self, uid: str) -> AutoLabelJob:
        return AutoLabelJob.from_row(self._call("jobs.get", uid))

    def list(
        self, *, project: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> CursorPage[AutoLabelJob]:
        return self._page(AutoLabelJob, "jobs.list", project=project, limit=limit, cursor=cursor)

    def cancel(self, uid: str) -> None:
        """Cancel a pending job now, a running one within one batch."""
        self._call("jobs.request_cancel", uid)

    def run(self, uid: str, *, device: str = "auto", should_stop: Callable[[], bool] | None = None) -> AutoLabelJob:
        """Run job ``uid`` here, in the calling thread, without a worker (``avala-infer auto-label create --run``):
        claim it, label its tasks batch by batch on ``device``, and return it as it ended. ``should_stop`` is asked
        between batches: once it answers True, the job stops after the batch in flight and stays running (the next
        worker resumes it). A job that another live worker holds is not run here: it is returned as it is."""
        from avala_infer.jobs import JobRunner
        from avala_infer.jobs.executors import make_executor
        from avala_infer.store import Store, worker_id

        executor = make_executor(self.get(uid).executor)  # a job created with executor="ray" runs on Ray here too
        try:
            store = Store(self._client.home)  # its own connection: a run is long
            with store, JobRunner(store, worker_id(), device=device, executor=executor) as runner:
                job = store.jobs.claim(runner.worker, runner.lease_s, only=uid)
                if job is not None:
                    runner.run(job, should_stop or (lambda: False))
        finally:
            executor.close()
        return self.get(uid)

    def wait(self, uid: str, *, timeout: float | None = None, poll_s: float = 0.2) -> AutoLabelJob:
        """Poll until the job is completed, failed or cancelled (or ``timeout`` seconds pass); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(uid)
            if job.status in ("completed", "failed", "cancelled"):
                return job
            if deadline is not None and time.monotonic() > deadline:
                return job
            time.sleep(poll_s)
