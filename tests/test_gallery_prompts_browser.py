"""The dry-run gallery of a prompted model (open-vocabulary detection) shows its prompts: headless chromium loads
``preview/index.html`` of a real dry run of a tiny OWL-ViT (``car`` prompted by two texts) on real photos, and the
Prompts table's numbers equal summary.json's ``per_prompt``; as the slider moves to each of the sweep's
thresholds, the whole run's count per prompt is what ``per_prompt``'s ``sweep`` says there, the previewed items'
(every item is previewed) the same, and a real run at one of them wrote exactly those counts. A prompt that
carries a payload is shown and counted as text, and a long Prompts table shows its rows past 15 on demand.

Without chromium the tests skip (under ``CI=true`` they fail).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from avala_infer import label
from avala_infer.annotations import Detections, Prediction
from avala_infer.exporters.preview import PreviewWriter
from avala_infer.exporters.summary import SummaryCollector
from tests.conftest import ASSETS, need
from tests.coverage_open_vocab import owl_folder, owl_spec
from tests.test_preview_browser import chromium, read_probe  # noqa: F401  (a fixture)

THRESHOLD = 0.45  # the dry run's own: the tiny model's scores spread around 0.5
ABOVE = 0.5  # a real run here must write what the page shows at this threshold
HOSTILE = "<img src=x onerror=\"document.body.setAttribute('data-pwned','prompt')\">"

# Loads the gallery in a frame, reads the Prompts table, moves the slider to each threshold (then unticks car),
# and reports what the page shows as JSON.
PROBE = """<!doctype html><html><body><iframe id="f" src="SRC" width="1280" height="2000"></iframe><script>
document.getElementById('f').addEventListener('load', function () {
  var doc = this.contentDocument, thresholds = THRESHOLDS;
  function cell(r, name) { return r.querySelector('.' + name).textContent; }
  function table() {
    return Array.from(doc.querySelectorAll('#prompts tr.prompt-row')).map(function (r) {
      var cells = r.querySelectorAll('td');
      return {label: r.dataset.label, prompt: r.dataset.prompt, labelText: cells[0].textContent,
              promptText: cells[1].textContent, run: cell(r, 'n-run'), preview: cell(r, 'n-preview'),
              predicted: cell(r, 'n-predicted'), mean: cell(r, 'n-mean'), max: cell(r, 'n-max'),
              muted: r.classList.contains('muted')};
    });
  }
  function state() {
    var s = doc.getElementById('state');
    return {conf: s.getAttribute('data-conf'), run: JSON.parse(s.getAttribute('data-run-prompts')),
            visible: JSON.parse(s.getAttribute('data-visible-prompts')),
            prompted: doc.querySelectorAll('svg g.a[data-prompt]').length,
            boxes: doc.querySelectorAll('svg g.a').length, rows: table()};
  }
  var report = {pwned: doc.body.getAttribute('data-pwned'),
                handlers: doc.querySelectorAll('[onerror],[onload]').length,
                titles: Array.from(doc.querySelectorAll('.tag[title]')).map(function (t) { return t.title; })};
  try {
    report.start = state();
    var more = doc.getElementById('more-prompt-rows');  // the rows past 15, shown on demand
    report.more = more ? {hidden: more.hidden, rows: more.querySelectorAll('tr').length} : null;
    if (more) { doc.getElementById('more-prompts').click(); report.more.shown = !more.hidden; }
    var slider = doc.getElementById('conf');
    report.moved = thresholds.map(function (t) {
      slider.value = String(t); slider.dispatchEvent(new Event('input'));
      return state();
    });
    slider.value = String(thresholds[0]); slider.dispatchEvent(new Event('input'));
    var car = doc.querySelector('tr.label-row[data-label="car"] input');
    car.checked = false; car.dispatchEvent(new Event('change'));
    report.noCar = state();
  } catch (e) { report.error = String(e); }
  var out = document.createElement('pre'); out.id = 'probe'; out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script></body></html>"""


def _nonzero(nested: dict) -> dict:
    """``{label: {prompt: n}}`` without the zeros (and labels left empty), as the page writes it."""
    kept = {label: {p: n for p, n in prompts.items() if n} for label, prompts in nested.items()}
    return {label: prompts for label, prompts in kept.items() if prompts}


def _probe(binary: str, page: Path, thresholds: list[float], workdir: Path) -> dict:
    probe = page.parent.parent / "probe.html"
    src = page.relative_to(probe.parent).as_posix()
    probe.write_text(PROBE.replace("SRC", src).replace("THRESHOLDS", json.dumps(thresholds)), encoding="utf-8")
    return read_probe(binary, probe, workdir / "profile", 8000, "1280,2000")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dry run of a tiny OWL-ViT at THRESHOLD (``car`` prompted by ``car`` and ``sedan``) and a real run at
    ABOVE, both over the ultralytics photos."""
    root = tmp_path_factory.mktemp("gallery_prompts")
    weights = owl_folder(root, "owlvit")
    spec = owl_spec(root / "owl.yaml", weights, ["person", "car"], params="prompts: {car: [car, sedan]}")
    images = sorted(need(ASSETS / "images" / "ultralytics").glob("*.jpg"))
    dry = label(images, str(spec), out=root / "dry", dry_run=True, confidence_threshold=THRESHOLD, device="cpu")
    real = label(images, str(spec), out=root / "real", confidence_threshold=ABOVE, device="cpu")
    summary = json.loads((root / "dry" / "summary.json").read_text(encoding="utf-8"))
    assert summary["per_prompt"] == dry.summary["per_prompt"]
    return root / "dry" / "preview" / "index.html", summary, real.summary, len(images)


def test_prompts_table_equals_per_prompt_and_follows_the_slider(chromium, runs, tmp_path):  # noqa: F811
    page, summary, real, n_images = runs
    per_prompt, sweep = summary["per_prompt"], summary["sweep"]
    assert summary["items"] == n_images and set(per_prompt) <= {"person", "car"}
    assert len(per_prompt.get("car", {})) == 2  # both of car's prompts scored boxes: two rows for one label
    found = _probe(chromium, page, sweep["thresholds"], tmp_path)
    assert "error" not in found, found["error"]

    # at the run's threshold: one row per (label, prompt) with summary.json's numbers, as text
    start = found["start"]
    assert start["conf"] == str(THRESHOLD)
    rows = {(r["label"], r["prompt"]): r for r in start["rows"]}
    expected = {(name, prompt) for name, prompts in per_prompt.items() for prompt in prompts}
    assert set(rows) == expected and len(start["rows"]) == len(expected)
    for (label_name, prompt), row in rows.items():
        counts = per_prompt[label_name][prompt]
        assert (row["labelText"], row["promptText"]) == (label_name, prompt)
        assert int(row["run"]) == counts["annotations"] and int(row["predicted"]) == counts["predicted"]
        assert float(row["mean"]) == counts["mean_score"] and float(row["max"]) == counts["max_score"]
        assert int(row["preview"]) == counts["annotations"]  # every item is previewed
    assert start["run"] == _nonzero({k: {p: c["annotations"] for p, c in v.items()} for k, v in per_prompt.items()})
    assert start["boxes"] == start["prompted"] > 0  # every box drawn says which prompt scored it
    assert found["more"] is None  # a few rows: all shown

    # the slider at each of the sweep's thresholds: the counts per prompt are the sweep's, in the table too
    seen = set()
    for step, (t, moved) in enumerate(zip(sweep["thresholds"], found["moved"], strict=True)):
        at_t = {name: {p: c["sweep"][step] for p, c in v.items()} for name, v in per_prompt.items()}
        assert float(moved["conf"]) == t
        assert moved["run"] == _nonzero(at_t) == moved["visible"], t
        for row in moved["rows"]:
            assert int(row["run"]) == at_t[row["label"]][row["prompt"]] == int(row["preview"]), (t, row)
        seen.add(json.dumps(moved["run"], sort_keys=True))
    assert len(seen) > 2  # the counts did change as the slider moved

    # a real run at ABOVE wrote what the page shows there
    at_above = found["moved"][sweep["thresholds"].index(ABOVE)]
    real_counts = {k: {p: c["annotations"] for p, c in v.items()} for k, v in real["per_prompt"].items()}
    assert at_above["run"] == _nonzero(real_counts) and real["annotations"] > 0
    assert real["annotations"] < summary["annotations"]  # ABOVE keeps fewer than the run's threshold

    # unticking car: its prompts are muted and leave the counts, person's stay
    no_car = found["noCar"]
    assert "car" not in no_car["run"] and "car" not in no_car["visible"]
    assert no_car["run"] == {k: v for k, v in found["moved"][0]["run"].items() if k != "car"}
    assert all(row["muted"] == (row["label"] == "car") for row in no_car["rows"])


def test_prompts_are_text_never_markup(chromium, tmp_path):  # noqa: F811
    """A prompt carrying a payload is shown and counted as text (its box, tag and row), and nothing of it runs."""
    source = need(ASSETS / "images" / "ultralytics" / "bus.jpg")
    image = cv2.imread(str(source))
    many = [f"person {k}" for k in range(15)]  # 18 prompts in all: the table shows 15, the rest on demand
    boxes = Detections(
        xyxy=[[10, 10, 200, 200], [50, 50, 300, 400], [0, 0, 100, 100], [200, 100, 400, 300]] + [[5, 5, 50, 50]] * 15,
        confidence=[0.9, 0.6, 0.4, 0.3] + [0.35] * 15,
        class_id=[0, 0, 1, 0] + [1] * 15,
        class_name=["car", "car", "person", "car"] + ["person"] * 15,
        prompt=["sedan", HOSTILE, "person", "sedan", *many],
    )
    out = tmp_path / "out"
    summary = SummaryCollector(out, ("car", "person"), {"model": "owl", "confidence_threshold": 0.25})
    preview = PreviewWriter(out, summary, 5)
    preview.take_image(0, image)
    prediction = Prediction(0, str(source), "bus.jpg", result=boxes)
    summary.write(prediction)
    preview.write(prediction)
    (page,) = preview.close()
    found = _probe(chromium, page, [0.5], tmp_path)
    assert "error" not in found, found["error"]
    assert found["pwned"] is None and found["handlers"] == 0
    start = found["start"]
    people = {"person": 1, **dict.fromkeys(many, 1)}
    assert start["run"] == start["visible"] == {"car": {"sedan": 2, HOSTILE: 1}, "person": people}
    assert found["moved"][0]["visible"] == found["moved"][0]["run"] == {"car": {"sedan": 1, HOSTILE: 1}}
    assert {row["promptText"] for row in start["rows"]} == {"sedan", HOSTILE, "person", *many}
    assert found["more"] == {"hidden": True, "rows": 3, "shown": True}
    assert f"prompt: {HOSTILE}" in found["titles"]  # the tag of a box says its prompt when it is not the label
