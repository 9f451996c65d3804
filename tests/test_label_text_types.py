"""Text models end to end: the CLI with --text and text files, every text writer, dry-run highlights."""

from __future__ import annotations

import json
import re

import pytest

from avala_infer import Text, label
from tests.conftest import ASSETS, need
from tests.test_cli import _run

SENTENCES = [
    "Angela Merkel met Emmanuel Macron in Paris on Monday.",
    "EU rejects German call to boycott British lamb .",
]
WHOLE_WORDS = "Nadim Ladki"  # aggregation "simple" cuts it into "Nad" + "im Ladki"; the default "first" does not


@pytest.fixture(scope="module")
def ner_model():
    need(ASSETS / "models" / "ner-minilm-conll03")
    return "ner-minilm-conll03"


def test_cli_ner_writes_conll_labelstudio_and_jsonl(ner_model, tmp_path):
    """No --aggregation: the CLI's default, first, labels whole words ("Nadim Ladki", not "Nad" + "im Ladki")."""
    args = ["label", "-m", ner_model, "--device", "cpu", "-o", tmp_path, "--labels", "PER,LOC"]
    for fmt in ("conll", "labelstudio", "jsonl"):
        args += ["--format", fmt]
    for sentence in [*SENTENCES, WHOLE_WORDS]:
        args += ["--text", sentence]
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == [*SENTENCES, WHOLE_WORDS]
    assert [(a["text"], a["label"]) for a in records[2]["annotations"]] == [(WHOLE_WORDS, "PER")]
    spans = [(a["text"], a["label"]) for a in records[0]["annotations"]]
    assert spans == [("Angela Merkel", "PER"), ("Emmanuel Macron", "PER"), ("Paris", "LOC")]
    assert records[1]["annotations"] == []  # only MISC there, and --labels keeps PER and LOC
    blocks = (tmp_path / "annotations.conll").read_text().strip("\n").split("\n\n")
    assert blocks[0].splitlines()[:4] == ["Angela B-PER", "Merkel I-PER", "met O", "Emmanuel B-PER"]
    assert all(line.endswith(" O") for line in blocks[1].splitlines())
    assert blocks[2].splitlines() == ["Nadim B-PER", "Ladki I-PER"]
    tasks = json.loads((tmp_path / "labelstudio.json").read_text())
    values = [r["value"] for r in tasks[0]["predictions"][0]["result"]]
    assert [(v["text"], v["labels"]) for v in values] == [(t, [label]) for t, label in spans]
    assert all(SENTENCES[0][v["start"] : v["end"]] == v["text"] for v in values)
    assert '<Label value="PER"/>' in (tmp_path / "labelstudio.config.xml").read_text()


def test_cli_text_file_fields_and_bad_records(tmp_path):
    need(ASSETS / "models" / "sentiment-minilm-sst2")
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text(
        '{"body": "a wonderful, moving film"}\n{"body": 3}\n{"body": "dull, lifeless and far too long"}\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    result = _run(
        "label", reviews, "-m", "sentiment-minilm-sst2", "--text-field", "body", "--top-k", "1", "-o", out,
        "--format", "jsonl", "--format", "labelstudio", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr  # one record failed, the others were labeled
    assert "no string field 'body'" in result.stderr
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["key"] for f in failures] == ["reviews.jsonl:2"]
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert [(r["key"], [a["label"] for a in r["annotations"]]) for r in records] == [
        ("reviews.jsonl:1", ["positive"]),
        ("reviews.jsonl:3", ["negative"]),
    ]
    tasks = json.loads((out / "labelstudio.json").read_text())
    assert [t["predictions"][0]["result"][0]["value"]["choices"] for t in tasks] == [["positive"], ["negative"]]
    assert tasks[0]["data"] == {"text": "a wonderful, moving film"}


def test_ner_dry_run_highlights_spans(ner_model, tmp_path):
    """label() with the default aggregation, first (recorded in the summary's settings)."""
    report = label([Text(s) for s in SENTENCES], ner_model, out=tmp_path, dry_run=True, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview", "summary.json"]
    html = (tmp_path / "preview" / "index.html").read_text()
    marked = re.findall(r"<mark[^>]*>(.*?)<sub>(\w+) [\d.]+</sub></mark>", html)
    assert ("Angela Merkel", "PER") in marked and ("Paris", "LOC") in marked and ("German", "MISC") in marked
    assert report.summary["per_label"]["PER"] == 2 and report.summary["settings"]["aggregation"] == "first"
