"""The embedded store: migrations, projects, imports (folders, manifests, texts), pages."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from avala_infer import Text
from avala_infer.errors import ConfigError, NotFoundError
from avala_infer.projects import imports as importing
from avala_infer.projects.imports import import_sources
from avala_infer.store import Store
from avala_infer.store.migrations import MIGRATIONS
from tests.conftest import VAL_IMAGES, need


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "home")
    yield store
    store.close()


def test_migrations_run_once_in_order_and_the_store_is_wal(tmp_path):
    first = Store(tmp_path)
    first.close()
    again = Store(tmp_path)  # re-opening applies nothing twice
    rows = again.conn.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()
    assert [r[0] for r in rows] == [name for name, _ in MIGRATIONS]
    assert again.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()
    raw = sqlite3.connect(tmp_path / "avala-infer.db")
    assert {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {
        "projects", "datasets", "items", "tasks", "jobs", "job_tasks", "results", "schema_migrations",
    }  # fmt: skip


def test_project_settings_are_checked(store):
    with pytest.raises(ConfigError, match="data_type"):
        store.projects.create("x", data_type="video")
    with pytest.raises(ConfigError, match="a image project cannot use a named_entity_recognition model"):
        store.projects.create("x", models={"named_entity_recognition": "ner-minilm-conll03"})
    with pytest.raises(ConfigError, match="unknown model type"):
        store.projects.create("x", models={"detection": "yolo11n"})
    with pytest.raises(ConfigError, match=r"\['car'\] more than once"):
        store.projects.create("x", ontology=["car", "bus", "car"])
    project = store.projects.create("streets", ontology=["car"], models={"object_detection": "yolo11n"})
    assert project["uid"].startswith("proj_") and project["ontology"] == ["car"] and project["task_count"] == 0
    with pytest.raises(NotFoundError, match="projects list"):
        store.projects.get("proj_nope")
    with pytest.raises(ConfigError, match="no model for image_classification"):
        store.jobs.create(project["uid"], model_type="image_classification")
    assert store.projects.extend_ontology(project["uid"], ["bus", "car", "truck"]) == ["car", "bus", "truck"]


def test_import_folder_twice_manifest_and_key_clashes(store, tmp_path):
    images = sorted(need(VAL_IMAGES).glob("*.jpg"))[:5]
    folder = tmp_path / "batch1"
    folder.mkdir()
    for image in images[:3]:
        shutil.copy(image, folder / image.name)
    project = store.projects.create("p")
    report = import_sources(store, project["uid"], [folder, tmp_path / "missing"])
    assert (report.created, report.existing, report.failed_count) == (3, 0, 1)
    assert "no such file" in report.failed[0]["error"]
    again = import_sources(store, project["uid"], [folder])
    assert (again.created, again.existing) == (0, 3)
    # a different image under a name already taken gets its own key
    other = tmp_path / "batch2"
    other.mkdir()
    shutil.copy(images[3], other / images[0].name)
    assert import_sources(store, project["uid"], [other]).created == 1
    # a manifest of paths, relative to its folder
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# images\n{images[4]}\nbatch1/{images[1].name}\n", encoding="utf-8")
    listed = import_sources(store, project["uid"], [manifest])
    assert (listed.created, listed.existing) == (1, 1)
    keys = [t["name"] for t in store.items.list_tasks(project=project["uid"])[0]]
    stem, suffix = images[0].name.rsplit(".", 1)
    assert keys == [i.name for i in images[:3]] + [f"{stem}_1.{suffix}", images[4].name]
    items, _ = store.items.list(store.items.project_dataset(project["uid"])["uid"])
    assert all(len(i["content_hash"]) == 64 and i["size"] > 0 and i["path"].startswith("/") for i in items)


def test_text_project_imports_records_and_strings(store, tmp_path):
    lines = tmp_path / "notes.txt"
    lines.write_text("first\n\nsecond\n", encoding="utf-8")
    records = tmp_path / "r.jsonl"
    records.write_text('{"body": "alpha"}\n{"nobody": 1}\n', encoding="utf-8")
    project = store.projects.create("texts", data_type="text", models={"text_classification": "sentiment-minilm-sst2"})
    report = import_sources(store, project["uid"], [lines, Text("a literal")], per_line=True)
    assert (report.created, report.failed_count) == (3, 0)
    report = import_sources(store, project["uid"], [records], text_field="body")
    assert (report.created, report.failed_count) == (1, 1)
    tasks = list(store.items.iter_task_items(project["uid"]))
    assert [t["text"] for t in tasks] == ["first", "second", "a literal", "alpha"]
    assert [t["path"] for t in tasks] == [None] * 4


def test_pages_walk_every_row_once(store):
    uids = [store.projects.create(f"p{i}")["uid"] for i in range(7)]
    seen, cursor = [], None
    while True:
        rows, cursor = store.projects.list(limit=3, cursor=cursor)
        seen += [r["uid"] for r in rows]
        if cursor is None:
            break
    assert seen == uids
    with pytest.raises(ConfigError, match="limit"):
        store.projects.list(limit=0)
    with pytest.raises(ConfigError, match="bad cursor"):
        store.projects.list(cursor="abc")


def test_store_is_a_context_manager_that_closes_its_connection(tmp_path):
    with Store(tmp_path) as store:
        uid = store.projects.create("p")["uid"]
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store.projects.get(uid)
    with Store(tmp_path) as again:
        assert again.projects.get(uid)["name"] == "p"


def test_reimport_hashes_only_new_or_changed_files(store, tmp_path, monkeypatch):
    """A re-import of 20 known files reads none of them (size and mtime match what the store recorded); a touched
    file is hashed again, once (its new mtime is then recorded), and a changed one too."""
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted(need(VAL_IMAGES).glob("*.jpg"))[:20]:
        shutil.copy(image, folder / image.name)
    hashed: list[str] = []
    real_hash = importing._sha256_file
    monkeypatch.setattr(importing, "_sha256_file", lambda path: hashed.append(Path(path).name) or real_hash(path))
    project = store.projects.create("p")["uid"]
    first = import_sources(store, project, [folder])
    assert (first.created, first.existing, len(hashed)) == (20, 0, 20)

    hashed.clear()
    again = import_sources(store, project, [folder])
    assert (again.created, again.existing, again.failed_count) == (0, 20, 0)
    assert hashed == []

    touched = sorted(folder.iterdir())[3]
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    again = import_sources(store, project, [folder])
    assert (again.created, again.existing, hashed) == (0, 20, [touched.name])  # same content: nothing added
    hashed.clear()
    assert import_sources(store, project, [folder]).existing == 20 and hashed == []  # its new mtime was recorded

    changed = sorted(folder.iterdir())[7]
    changed.write_bytes(changed.read_bytes() + b"\0")
    again = import_sources(store, project, [folder])
    assert (again.created, again.existing, hashed) == (1, 19, [changed.name])
    hashed.clear()
    assert import_sources(store, project, [folder]).existing == 20 and hashed == []


def test_bad_manifest_lines_are_reported_with_their_line_not_raised(store, tmp_path):
    image = need(VAL_IMAGES / "000000000139.jpg")
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(f'{{"path": "{image}"}}\nnot json\n[1, 2]\n{{"file": "x.jpg"}}\n', encoding="utf-8")
    table = tmp_path / "list.csv"
    table.write_text(f"file\n{image}\n", encoding="utf-8")
    binary = tmp_path / "list.txt"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    project = store.projects.create("p")["uid"]
    report = import_sources(store, project, [manifest, table, binary])
    assert report.created == 1 and report.failed_count == 5
    errors = {failure["source"]: failure["error"] for failure in report.failed}
    assert errors[f"{manifest}:2"].startswith("not a JSON object")
    assert "no string 'path' field" in errors[f"{manifest}:3"] and "no string 'path' field" in errors[f"{manifest}:4"]
    assert errors[str(table)] == "no 'path' column in its header (file)"  # not the manifest's whole folder
    assert errors[str(binary)].startswith("manifest is not UTF-8 text")


def test_a_store_of_the_previous_schema_keeps_its_results_and_moves_its_ontology(tmp_path):
    """A store made before settings fingerprints (migrations 0001-0006): its results stay, each job keeps the
    result it made or (a skipped task) the one it kept, and the old ontology becomes that of the model types
    with results; those results have no fingerprint, so the next job labels again once."""
    from avala_infer.store.db import _statements

    (tmp_path / "home").mkdir(mode=0o700)
    raw = sqlite3.connect(tmp_path / "home" / "avala-infer.db")
    raw.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    old = [(name, sql) for name, sql in MIGRATIONS if name < "0007"]
    assert [name[:4] for name, _ in old] == ["0001", "0002", "0003", "0004", "0005", "0006"]
    for name, sql in old:
        for statement in _statements(sql):
            raw.execute(statement)
        raw.execute("INSERT INTO schema_migrations VALUES (?, 'then')", (name,))
    now = "2026-01-01T00:00:00+00:00"
    raw.executescript(f"""
        INSERT INTO projects (uid, name, data_type, ontology, models, created_at, updated_at) VALUES
            ('proj_old', 'old', 'image', '["person", "car"]', '{{"object_detection": "yolo11n"}}', '{now}', '{now}'),
            ('proj_new', 'new', 'image', '["car"]', '{{}}', '{now}', '{now}');
        INSERT INTO datasets (uid, name, slug, data_type, project_uid, created_at, updated_at) VALUES
            ('ds_old', 'old', 'old', 'image', 'proj_old', '{now}', '{now}'),
            ('ds_new', 'new', 'new', 'image', 'proj_new', '{now}', '{now}');
        INSERT INTO items (uid, dataset_uid, key, path, size, content_hash, created_at) VALUES
            ('item_1', 'ds_old', 'a.jpg', '/x/a.jpg', 1, 'h', '{now}');
        INSERT INTO tasks (uid, project_uid, item_uid, type, name, status, created_at, updated_at) VALUES
            ('task_1', 'proj_old', 'item_1', 'image', 'a.jpg', 'labeled', '{now}', '{now}');
        INSERT INTO jobs (uid, project_uid, model_type, model, confidence_threshold, status, created_at) VALUES
            ('job_1', 'proj_old', 'object_detection', 'yolo11n', 0.5, 'completed', '{now}'),
            ('job_2', 'proj_old', 'object_detection', 'yolo11n', 0.5, 'completed', '{now}');
        INSERT INTO job_tasks (job_uid, task_uid, outcome) VALUES ('job_1', 'task_1', 'succeeded'),
            ('job_2', 'task_1', 'skipped');
        INSERT INTO results (uid, task_uid, job_uid, model, model_type, annotations, created_at) VALUES
            ('res_1', 'task_1', 'job_1', 'yolo11n', 'object_detection',
             '{{"key": "a.jpg", "width": 4, "height": 4, "annotations": []}}', '{now}');
    """)
    raw.commit()
    raw.close()
    with Store(tmp_path / "home") as store:
        kept = dict(store.conn.execute("SELECT job_uid, result_uid FROM job_tasks").fetchall())
        assert kept == {"job_1": "res_1", "job_2": "res_1"}
        (result,) = store.results.for_task("task_1")
        assert (result["uid"], result["job_uid"], result["settings_hash"]) == ("res_1", "job_1", None)
        assert [r["uid"] for r in store.results.iter_latest("proj_old", "object_detection", job="job_2")] == ["res_1"]
        old, new = store.projects.get("proj_old"), store.projects.get("proj_new")
        assert old["ontologies"] == {"object_detection": ["person", "car"]} and old["default_ontology"] == []
        assert new["ontology"] == ["car"] and new["type_ontologies"] == {}  # no results: a declared ontology
        job = store.jobs.create("proj_old", model_type="object_detection", confidence_threshold=0.5)
        (task,) = store.jobs.remaining_tasks(job)
        assert task["same_result"] is None  # an old result has no fingerprint: labeled again, once
