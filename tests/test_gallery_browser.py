"""The dry-run gallery chooses the threshold: headless chromium loads ``preview/index.html#conf=T`` and the
counts it shows (written by the page into ``#state``'s data-* attributes) equal those of real runs at T, above
and below the run's own threshold; the label filter, the settings to copy, click to enlarge, the collapsed
table, readable tags and failure cards that wrap are checked in the page, as a browser lays it out.

The screenshot (``gallery.png`` in the test's folder; keep it with ``pytest --basetemp=DIR``) is the page at
``#conf=0.6``. Without chromium the tests skip (under ``CI=true`` they fail).
"""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from avala_infer import label
from avala_infer.annotations import Classifications, Entities, Prediction, SemanticMask
from avala_infer.exporters.preview import PreviewWriter
from avala_infer.exporters.summary import SummaryCollector
from tests.conftest import ASSETS, VAL_IMAGES, need
from tests.test_preview_browser import _chromium, chromium, read_probe  # noqa: F401  (a fixture)

THRESHOLDS = (0.1, 0.6)  # below and above the dry run's own (0.25)


class _Attributes(HTMLParser):
    def __init__(self, element_id: str) -> None:
        super().__init__()
        self.element_id, self.found = element_id, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id") == self.element_id and self.found is None:
            self.found = attrs


def _dom(binary: str, page: Path, profile: Path, fragment: str = "") -> str:
    return _chromium(
        binary,
        profile,
        "--allow-file-access-from-files",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.as_uri() + fragment,
    )


def _state(dom: str) -> dict:
    parser = _Attributes("state")
    parser.feed(dom)
    assert parser.found is not None, dom[-2000:]
    return parser.found


def _pre(dom: str, element_id: str) -> str:
    found = re.search(rf'<pre class="cmd" id="{element_id}">(.*?)</pre>', dom, re.S)
    assert found, element_id
    return html.unescape(found.group(1))


@pytest.fixture(scope="module")
def runs(engine_onnx, tmp_path_factory):
    """A dry run (at the default 0.25) and real runs at 0.1 and 0.6 over 16 coco128 val2017 images."""
    images = sorted(need(VAL_IMAGES).glob("*.jpg"))[:16]
    out = tmp_path_factory.mktemp("gallery")
    dry = label(images, engine_onnx, out=out / "dry", dry_run=True)
    real = {t: label(images, engine_onnx, out=out / f"real{t}", confidence_threshold=t).summary for t in THRESHOLDS}
    return out / "dry" / "preview" / "index.html", dry.summary, real


def test_threshold_in_the_address_shows_what_a_real_run_keeps(chromium, runs, tmp_path):  # noqa: F811
    page, dry, real = runs
    assert dry["settings"]["confidence_threshold"] == 0.25 and dry["sweep"]["floor"] == 0.05
    for t in THRESHOLDS:
        dom = _dom(chromium, page, tmp_path / "profile", f"#conf={t}")
        state = _state(dom)
        assert state["data-conf"] == str(t)
        # the 16 previewed items: every box the page shows at t, per label, is what a real run at t wrote
        assert json.loads(state["data-visible-labels"]) == real[t]["per_label"]
        assert int(state["data-visible"]) == real[t]["annotations"]
        # the whole run's counts (from the summary's 0.01 steps) and summary.json's sweep agree too
        assert json.loads(state["data-run-labels"]) == real[t]["per_label"]
        sweep = dry["sweep"]
        step = sweep["thresholds"].index(t)
        assert sweep["annotations"][step] == real[t]["annotations"]
        assert {k: v[step] for k, v in sweep["per_label"].items() if v[step]} == real[t]["per_label"]
        assert dry["annotations_at_threshold"].get(str(t), real[t]["annotations"]) == real[t]["annotations"]
        cli = f"avala-infer auto-label create PROJECT_UID --model-type object_detection --confidence {t}"
        assert _pre(dom, "cmd-cli") == cli
        assert _pre(dom, "cmd-py") == (
            'client.auto_label_jobs.create(project_uid="PROJECT_UID", model_type="object_detection", '
            f"confidence_threshold={t})"
        )
        print(f"#conf={t}: {state['data-visible']} boxes shown = a real run's {real[t]['annotations']}")
    # no threshold in the address: the run's own, with the run's counts
    state = _state(_dom(chromium, page, tmp_path / "profile"))
    assert state["data-conf"] == "0.25" and json.loads(state["data-visible-labels"]) == dry["per_label"]

    screenshot = tmp_path / "gallery.png"
    _chromium(
        chromium,
        tmp_path / "profile",
        "--allow-file-access-from-files",
        "--virtual-time-budget=5000",
        "--window-size=1280,1600",
        f"--screenshot={screenshot}",
        page.as_uri() + "#conf=0.6",
    )
    shot = cv2.imread(str(screenshot))
    assert shot is not None and shot.shape[:2] == (1600, 1280) and float(shot.std()) > 20
    print(f"screenshot: {screenshot}")


# Loads the gallery in a frame, plays with it as a user would, then reports what the page shows as JSON.
PROBE = """<!doctype html><html><body><iframe id="f" src="%s" width="1280" height="2000"></iframe><script>
document.getElementById('f').addEventListener('load', function () {
  var win = this.contentWindow, doc = this.contentDocument;
  function state() {
    var s = doc.getElementById('state');
    return {conf: s.getAttribute('data-conf'), visible: JSON.parse(s.getAttribute('data-visible-labels')),
            run: s.getAttribute('data-run-labels'), cli: doc.getElementById('cmd-cli').textContent,
            py: doc.getElementById('cmd-py').textContent};
  }
  function rgb(text) { return text.match(/[0-9.]+/g).slice(0, 3).map(Number); }
  var report = {};
  try {
    report.cards = Array.from(doc.querySelectorAll('.card')).map(function (c) {
      return [c.scrollWidth, c.clientWidth]; });
    report.pageWidth = [doc.documentElement.scrollWidth, doc.documentElement.clientWidth];
    report.start = state();
    var more = doc.getElementById('more-rows');
    report.rows = doc.querySelectorAll('tr.label-row').length;
    report.hiddenRows = more ? more.querySelectorAll('tr').length : 0;
    report.moreHidden = more ? more.hidden : null;
    if (more) { doc.getElementById('more-labels').click(); report.moreShown = !more.hidden; }
    doc.getElementById('no-labels').click();
    report.none = state();
    var person = doc.querySelector('tr.label-row[data-label="person"] input');
    if (!person) throw new Error('no person row');
    person.checked = true; person.dispatchEvent(new Event('change'));
    report.person = state();
    var slider = doc.getElementById('conf');
    slider.value = '0.9'; slider.dispatchEvent(new Event('input'));
    report.high = state();
    doc.getElementById('all-labels').click();
    report.all = state();
    var shown = Array.from(doc.querySelectorAll('.tag')).filter(function (t) { return t.offsetParent; });
    report.tags = shown.map(function (t) {
      var cs = win.getComputedStyle(t);
      return [t.textContent, rgb(cs.color), rgb(cs.backgroundColor)];
    });
    doc.querySelector('.card figure').click();
    var zoom = doc.getElementById('zoom');
    report.zoom = [zoom.classList.contains('on'), zoom.querySelectorAll('img').length,
                   zoom.querySelectorAll('svg g.a').length, zoom.getBoundingClientRect().width];
    doc.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}));
    report.zoomClosed = !zoom.classList.contains('on');
  } catch (e) { report.error = String(e); }
  var out = document.createElement('pre'); out.id = 'probe'; out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script></body></html>"""


def _probe(binary: str, page: Path, fragment: str, workdir: Path) -> dict:
    probe = page.parent.parent / "probe.html"
    probe.write_text(PROBE % (page.relative_to(probe.parent).as_posix() + fragment), encoding="utf-8")
    return read_probe(binary, probe, workdir / "profile", 8000, "1280,2000")


def _contrast(ink, background) -> float:
    def luminance(rgb):
        c = [v / 255 for v in rgb]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((luminance(ink), luminance(background)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_label_filter_settings_to_copy_zoom_and_readable_tags(chromium, runs, tmp_path):  # noqa: F811
    page, dry, real = runs
    found = _probe(chromium, page, "#conf=0.6", tmp_path)
    assert "error" not in found, found["error"]
    assert found["start"]["conf"] == "0.6" and found["start"]["visible"] == real[0.6]["per_label"]
    # the table: every label predicted at the floor, 15 rows shown, the rest on demand
    assert found["rows"] == len(dry["sweep"]["per_label"]) > 15
    assert found["hiddenRows"] == found["rows"] - 15 and found["moreHidden"] is True and found["moreShown"]
    # the label filter hides the labels unticked and the settings to copy follow it and the slider
    assert found["none"]["visible"] == {} and found["none"]["run"] == "{}"
    assert found["person"]["visible"] == {"person": real[0.6]["per_label"]["person"]}
    assert found["person"]["cli"].endswith("--confidence 0.6 --labels person")
    assert found["person"]["py"].endswith('confidence_threshold=0.6, labels=["person"])')
    assert found["high"]["conf"] == "0.9" and found["high"]["cli"].endswith("--confidence 0.9 --labels person")
    assert 0 < sum(found["high"]["visible"].values()) < found["person"]["visible"]["person"]
    assert "--labels" not in found["all"]["cli"] and "labels=" not in found["all"]["py"]
    # tags shown at 0.9: readable (WCAG AA, 4.5:1) on their label's color
    assert found["tags"]
    for text, ink, background in found["tags"]:
        assert _contrast(ink, background) >= 4.5, (text, ink, background)
    # click to enlarge: the picture with its boxes, over the page; Escape closes it
    on, images, boxes, width = found["zoom"]
    assert on and images == 1 and boxes > 0 and width > 1000 and found["zoomClosed"]
    assert all(scroll <= client + 1 for scroll, client in found["cards"])


def test_failure_cards_wrap_and_text_models_render(chromium, tmp_path):  # noqa: F811
    """A failure with a 3,000-character unbroken reason stays inside its card; entity spans and text classes
    hide and show with the slider."""
    text = "Angela Merkel met Macron in Paris ."
    entities = Entities.from_records(
        [
            {"start": 0, "end": 13, "score": 0.99, "class_id": 0, "label": "PER", "word": "angela merkel"},
            {"start": 18, "end": 24, "score": 0.3, "class_id": 0, "label": "PER", "word": "macron"},
            {"start": 28, "end": 33, "score": 0.7, "class_id": 1, "label": "LOC", "word": "paris"},
        ]
    )
    classes = Classifications.from_scores(np.array([0.2, 0.8], np.float32), ("PER", "LOC"))
    predictions = [
        Prediction(0, "<text 0>", "text_0", result=entities, text=text),
        Prediction(1, "<text 1>", "text_1", result=classes, text="a text class"),
        Prediction(2, "x.txt", "x.txt", error="cannot read " + "/very/long" * 300, text=""),
    ]
    out = tmp_path / "out"
    summary = SummaryCollector(out, ("PER", "LOC"), {"model": "ner", "confidence_threshold": 0.25})
    preview = PreviewWriter(out, summary, 5)
    for prediction in predictions:
        summary.write(prediction)
        preview.write(prediction)
    (page,) = preview.close()
    for fragment, expected in (("#conf=0.5", {"PER": 1, "LOC": 2}), ("#conf=0.25", {"PER": 2, "LOC": 2})):
        state = _state(_dom(chromium, page, tmp_path / "profile", fragment))
        assert json.loads(state["data-visible-labels"]) == expected, fragment
    found = _probe(chromium, page, "#conf=0.5", tmp_path)
    assert len(found["cards"]) == 3
    assert all(scroll <= client + 1 for scroll, client in found["cards"]), found["cards"]
    assert found["pageWidth"][0] <= found["pageWidth"][1]


def test_semantic_masks_keep_the_runs_overlay(chromium, tmp_path):  # noqa: F811
    """Semantic masks are thresholded per pixel: the slider stays at the run's threshold, the overlay drawn."""
    source = need(ASSETS / "images" / "ultralytics" / "bus.jpg")
    image = cv2.imread(str(source))
    class_map = np.full(image.shape[:2], -1, np.int32)
    class_map[: image.shape[0] // 2] = 0
    mask = SemanticMask(class_map, np.full(image.shape[:2], 0.8, np.float32), ("sky",))
    out = tmp_path / "out"
    summary = SummaryCollector(out, ("sky",), {"model": "seg", "confidence_threshold": 0.3})
    preview = PreviewWriter(out, summary, 5)
    preview.take_image(0, image)  # the picture the pipeline decoded
    prediction = Prediction(0, str(source), "bus.jpg", result=mask)
    summary.write(prediction)
    preview.write(prediction)
    (page,) = preview.close()
    dom = _dom(chromium, page, tmp_path / "profile", "#conf=0.9")
    state = _state(dom)
    assert state["data-conf"] == "0.3" and json.loads(state["data-run-labels"]) == {"sky": 1}
    assert "thresholded per pixel" in dom and "sky 50.0%" in dom
