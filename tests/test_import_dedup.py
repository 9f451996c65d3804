"""Imports count files once; bad rows and records fail alone; sources that stand for nothing are refused early.

Real store (SQLite in a temporary folder), real files, and the CLI as a subprocess for the exit codes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from avala_infer.errors import UnsupportedInputError
from avala_infer.projects.imports import import_sources
from avala_infer.store import Store
from tests.conftest import VAL_IMAGES, need

IMAGES = ["000000000139.jpg", "000000000285.jpg", "000000000632.jpg"]


@pytest.fixture()
def store(tmp_path):
    store = Store(tmp_path / "home")
    yield store
    store.close()


@pytest.fixture()
def folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name in IMAGES[:2]:
        shutil.copy(need(VAL_IMAGES / name), folder / name)
    shutil.copy(need(VAL_IMAGES / IMAGES[2]), folder / "sub" / IMAGES[2])
    return folder


def _keys(store, project):
    dataset = store.items.project_dataset(project)["uid"]
    return sorted(row["key"] for row in store.items.list(dataset, limit=1000)[0])


def _cli(*args, home):
    command = [sys.executable, "-m", "avala_infer.cli", *map(str, args), "--home", str(home)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_a_file_reached_twice_in_one_import_is_one_item(store, folder, tmp_path):
    project = store.projects.create("p")["uid"]
    link = tmp_path / "link.jpg"
    os.symlink(folder / IMAGES[0], link)  # another name for the same file: the real path decides
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"path\n{folder / IMAGES[1]}\n{folder / IMAGES[1]}\nimages/./{IMAGES[0]}\n", encoding="utf-8")
    report = import_sources(store, project, [folder, folder, f"{folder}/**/*.jpg", link, manifest])
    assert (report.created, report.existing, report.failed_count) == (3, 0, 0), report.failed
    assert _keys(store, project) == sorted([IMAGES[0], IMAGES[1], f"sub/{IMAGES[2]}"])
    assert store.items.count_tasks(project) == 3
    again = import_sources(store, project, [folder, folder])  # and a second import finds them all there
    assert (again.created, again.existing) == (0, 3)


def test_import_dir_dir_on_the_cli_creates_each_file_once(folder, tmp_path):
    home = tmp_path / "home"
    created = _cli("projects", "create", "p", "--json", home=home)
    uid = json.loads(created.stdout)["uid"]
    result = _cli("import", uid, folder, folder, f"{folder}/*.jpg", home=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3 created, 0 existing, 0 failed"


def test_manifest_rows_with_an_empty_path_or_a_folder_fail_alone(store, folder, tmp_path):
    project = store.projects.create("p")["uid"]
    (folder / "notes").mkdir()
    table = folder / "list.csv"  # in the image folder: an empty row must not stand for this whole folder
    table.write_text(f'path\n{IMAGES[0]}\n""\n   \n.\nnotes\n', encoding="utf-8")
    lines = folder / "list.jsonl"
    lines.write_bytes(
        b'{"path": ""}\n{"path": "."}\n{"path": "' + IMAGES[1].encode() + b'"}\n{"path": "caf\xe9.jpg"}\n'
        b'{"path": "sub/' + IMAGES[2].encode() + b'"}\n'
    )
    report = import_sources(store, project, [table, lines])
    assert report.created == 3, report.failed
    errors = {f["source"]: f["error"] for f in report.failed}
    assert set(errors) == {f"{table}:3", f"{table}:4", f"{table}:5", f"{table}:6", f"{lines}:1", f"{lines}:2",
                           f"{lines}:4"}  # fmt: skip
    assert errors[f"{table}:3"] == errors[f"{table}:4"] == "empty 'path'"
    assert "names a folder" in errors[f"{table}:5"] and "names a folder" in errors[f"{table}:6"]
    assert "no string 'path' field" in errors[f"{lines}:1"] and "names a folder" in errors[f"{lines}:2"]
    assert errors[f"{lines}:4"].startswith("not UTF-8 text (byte 0xe9)")  # that line, not the whole manifest
    assert _keys(store, project) == sorted([IMAGES[0], IMAGES[1], IMAGES[2]])


def test_text_records_fail_alone_bad_bytes_bad_json_and_empty_texts(store, tmp_path):
    project = store.projects.create("t", data_type="text")["uid"]
    records = tmp_path / "reviews.jsonl"
    records.write_bytes(
        b'{"text": "great product"}\n{"text": "caf\xe9 au lait"}\n{not json}\n{"text": ""}\n{"text": "  "}\n'
        b'{"text": "awful"}\n'
    )
    table = tmp_path / "rows.csv"
    table.write_bytes(b'id,text\n1,fine\n2,\n3,caf\xe9\n4,"also fine"\n')
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n", encoding="utf-8")
    whole = tmp_path / "whole.txt"
    whole.write_text("a whole file", encoding="utf-8")
    report = import_sources(store, project, [records, table, empty, blank, whole, records])
    errors = {f["source"]: f["error"] for f in report.failed}
    assert report.created == 5, errors  # 2 records + 2 rows + whole.txt; records named twice: read once
    assert set(errors) == {f"{records}:2", f"{records}:3", f"{records}:4", f"{records}:5", f"{table}:3",
                           f"{table}:4", str(empty), str(blank)}  # fmt: skip
    assert errors[f"{records}:2"].startswith("line 2 is not UTF-8 text (byte 0xe9")
    assert "not JSON" in errors[f"{records}:3"]
    assert "text in field 'text' is empty" in errors[f"{records}:4"] and "is empty" in errors[f"{records}:5"]
    assert "is empty" in errors[f"{table}:3"] and "not UTF-8" in errors[f"{table}:4"]
    assert "holds no text" in errors[str(empty)] and "holds no text" in errors[str(blank)]
    texts = sorted(row["text"] or "" for row in store.items.list(store.items.project_dataset(project)["uid"])[0])
    assert texts == ["", "also fine", "awful", "fine", "great product"]  # "" : whole.txt, stored by path


def test_an_empty_folder_and_an_empty_glob_are_refused_alike_before_any_work(store, tmp_path, folder):
    project = store.projects.create("p")["uid"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    for source in (empty, f"{tmp_path}/nothing-*.jpg"):
        with pytest.raises(UnsupportedInputError, match=r"^no input items found in .*; give image files"):
            import_sources(store, project, [source])
    assert store.items.count_tasks(project) == 0
    mixed = import_sources(store, project, [folder, empty, f"{tmp_path}/nothing-*.jpg"])  # with others: reported
    assert mixed.created == 3
    assert [f["error"] for f in mixed.failed] == [
        f"no image files in {empty} (searched recursively)",
        f"no image files match '{tmp_path}/nothing-*.jpg'",
    ]


def test_empty_sources_give_one_exit_code_and_message_on_label_and_import(tmp_path):
    """``label`` refuses them before the model loads: the model here has no weights, so loading it would fail
    with another error."""
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = tmp_path / "ghost.yaml"
    spec.write_text(
        "name: ghost\nmodel_type: object_detection\nbackend: ultralytics\nweights: no-such-weights.pt\nlabels: [a]\n"
    )
    home = tmp_path / "home"
    uid = json.loads(_cli("projects", "create", "p", "--json", home=home).stdout)["uid"]
    for source in (empty, tmp_path / "nothing-*.jpg"):
        labeled = subprocess.run(
            [sys.executable, "-m", "avala_infer.cli", "label", str(source), "-m", str(spec), "-o", str(tmp_path / "o")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        imported = _cli("import", uid, source, home=home)
        for result in (labeled, imported):
            assert result.returncode == 1, result.stderr
            assert result.stderr.startswith(f"error: no input items found in {source}: no image files "), result.stderr
            assert result.stderr.endswith("; give image files, folders holding them, or globs that match them\n")
            assert "weights" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
