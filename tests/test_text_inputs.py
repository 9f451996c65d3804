"""Text inputs: .txt (whole or per line), .jsonl and .csv/.tsv fields, literal Text strings; bad records fail alone."""

from __future__ import annotations

import numpy as np
import pytest

from avala_infer import Text
from avala_infer.engine.loaders import read_text
from avala_infer.engine.sources import TextReading, check_some_items, check_sources_fit, count_items, iter_items
from avala_infer.errors import ItemError, UnsupportedInputError


def _texts(sources, reading=None):
    out = []
    for item in iter_items(sources, "text", reading):
        try:
            out.append((item.key, read_text(item, {})))
        except ItemError as exc:
            out.append((item.key, ItemError(str(exc))))
    return out


def test_txt_whole_file_and_per_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\n\nsecond line, with ünïcode\n", encoding="utf-8")
    assert _texts([path]) == [("notes.txt", "first line\n\nsecond line, with ünïcode\n")]
    per_line = _texts([path], TextReading(per_line=True))
    assert per_line == [("notes.txt:1", "first line"), ("notes.txt:3", "second line, with ünïcode")]
    assert count_items([path], "text", TextReading(per_line=True)) == 2


def test_jsonl_field_and_bad_lines_fail_alone(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text(
        '{"body": "great product", "id": 1}\n{not json}\n{"other": "x"}\n\n{"body": "awful"}\n', encoding="utf-8"
    )
    items = _texts([path], TextReading(field="body"))
    assert [k for k, _ in items] == ["reviews.jsonl:1", "reviews.jsonl:2", "reviews.jsonl:3", "reviews.jsonl:5"]
    assert items[0][1] == "great product" and items[3][1] == "awful"
    assert "not JSON" in str(items[1][1])
    assert "no string field 'body'" in str(items[2][1])


def test_csv_and_tsv_columns(tmp_path):
    csv_path = tmp_path / "data.csv"
    csv_path.write_text('id,text\n1,"hello, world"\n2,"multi\nline"\n', encoding="utf-8")
    assert _texts([csv_path]) == [("data.csv:2", "hello, world"), ("data.csv:4", "multi\nline")]
    tsv_path = tmp_path / "data.tsv"
    tsv_path.write_text("sentence\tlabel\nit 's fine\t1\n", encoding="utf-8")
    assert _texts([tsv_path], TextReading(field="sentence")) == [("data.tsv:2", "it 's fine")]
    missing = _texts([csv_path], TextReading(field="body"))
    assert len(missing) == 1 and "no column 'body'" in str(missing[0][1]) and "id, text" in str(missing[0][1])


def test_literal_texts_folders_and_typos(tmp_path):
    (tmp_path / "a.txt").write_text("alpha", encoding="utf-8")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")  # not a text file: a folder walk for text skips it
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text('{"text": "beta"}\n', encoding="utf-8")
    items = _texts([tmp_path, Text("gamma"), "no_such_file.txt", "a plain string"])
    assert items[:3] == [("a.txt", "alpha"), ("sub/b.jsonl:1", "beta"), ("text_000002", "gamma")]
    assert "no such file" in str(items[3][1])
    assert "wrap it" in str(items[4][1])  # a str is a path; the error says how to pass literal text


def test_read_text_refuses_non_utf8_and_huge(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    item = next(iter_items([latin], "text"))
    with pytest.raises(ItemError, match="not UTF-8"):
        read_text(item, {})
    big = tmp_path / "big.txt"
    big.write_text("x" * 5000, encoding="utf-8")
    with pytest.raises(ItemError, match="--per-line"):
        read_text(next(iter_items([big], "text")), {}, max_bytes=1000)


def test_media_mismatch_is_refused_before_work(tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"\xff\xd8\xff")
    with pytest.raises(UnsupportedInputError, match="reads text"):
        check_sources_fit([image], "text", "ner")
    with pytest.raises(UnsupportedInputError, match="reads text"):
        check_sources_fit([np.zeros((4, 4, 3), np.uint8)], "text", "ner")
    with pytest.raises(UnsupportedInputError, match="reads images"):
        check_sources_fit([Text("hello")], "image", "yolo11n")


def test_a_bad_byte_fails_its_record_not_the_rest_of_the_file(tmp_path):
    records = tmp_path / "r.jsonl"
    records.write_bytes(b'{"text": "one"}\n{"text": "caf\xe9"}\n{"text": "three"}\n')
    items = _texts([records])
    assert [k for k, _ in items] == ["r.jsonl:1", "r.jsonl:2", "r.jsonl:3"]
    assert items[0][1] == "one" and items[2][1] == "three"
    assert str(items[1][1]).startswith("line 2 is not UTF-8 text (byte 0xe9")
    lines = tmp_path / "l.txt"
    lines.write_bytes(b"first\n\xff\xfe second\nthird\n")
    per_line = _texts([lines], TextReading(per_line=True))
    assert per_line[0] == ("l.txt:1", "first") and per_line[2] == ("l.txt:3", "third")
    assert "not UTF-8" in str(per_line[1][1])
    table = tmp_path / "t.csv"
    table.write_bytes(b"text\nok\nna\xefve\nfine\n")
    rows = _texts([table])
    assert rows[0] == ("t.csv:2", "ok") and rows[2] == ("t.csv:4", "fine") and "not UTF-8" in str(rows[1][1])


def test_empty_texts_fail_with_a_reason(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("  \n\t\n", encoding="utf-8")
    (tmp_path / "r.jsonl").write_text('{"text": ""}\n{"text": " "}\n{"text": "ok"}\n', encoding="utf-8")
    (tmp_path / "t.csv").write_text("id,text\n1,\n2,ok\n", encoding="utf-8")
    items = dict(_texts([tmp_path, Text(""), Text("   "), Text("fine")]))
    assert items["r.jsonl:3"] == items["t.csv:3"] == "ok" and items["text_000009"] == "fine"
    reasons = {key: str(value) for key, value in items.items() if isinstance(value, ItemError)}
    assert set(reasons) == {"blank.txt", "empty.txt", "r.jsonl:1", "r.jsonl:2", "t.csv:2", "text_000007",
                            "text_000008"}  # fmt: skip
    assert "holds no text" in reasons["empty.txt"] and "holds no text" in reasons["blank.txt"]
    assert "text in field 'text' is empty" in reasons["r.jsonl:1"] and "column 'text' is empty" in reasons["t.csv:2"]
    assert reasons["text_000007"] == reasons["text_000008"] == "the text is empty"


def test_unique_counts_a_file_reached_twice_once(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.png"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "alias.jpg").symlink_to(folder / "a.jpg")
    sources = [folder, folder / "a.jpg", f"{folder}/**/*.png", tmp_path / "in" / "sub" / ".." / "a.jpg",
               tmp_path / "alias.jpg", folder]  # fmt: skip
    assert [i.key for i in iter_items(sources, "image", unique=True)] == ["a.jpg", "sub/b.png"]
    assert count_items(sources, "image", unique=True) == 2
    assert count_items(sources, "image") == 8  # Engine.predict: one prediction per input given


def test_an_empty_folder_and_an_empty_glob_give_one_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.md").write_text("not an image")
    messages = []
    for source in (tmp_path / "empty", f"{tmp_path}/*.png"):
        with pytest.raises(UnsupportedInputError) as caught:
            check_some_items([source], "image")
        messages.append(str(caught.value).replace(str(source), "SOURCE"))
    assert messages[0].split(": ")[0] == messages[1].split(": ")[0] == "no input items found in SOURCE"
    assert messages[0].endswith("give image files, folders holding them, or globs that match them")
    assert messages[0].rsplit(";", 1)[1] == messages[1].rsplit(";", 1)[1]
    check_some_items([tmp_path / "empty", tmp_path / "missing.png"], "image")  # a missing file: a failed item
    with pytest.raises(UnsupportedInputError, match="no text files"):
        check_some_items([tmp_path / "empty"], "text")
