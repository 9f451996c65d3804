"""The dry-run gallery (``preview/index.html``) in a real browser: every label, key and text it shows is text,
never markup. Hostile names carry payloads that leave a mark in the page if they ever run
(``data-pwned`` on ``<body>``); headless chromium loads the gallery in a frame of a probe page, waits for
the images, and reports what the page holds.

Without chromium the tests skip (say how to install it); under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest

from avala_infer import label
from avala_infer.annotations import Entities, Prediction
from avala_infer.exporters.preview import PreviewWriter
from avala_infer.exporters.preview_page import SCRIPT
from avala_infer.exporters.summary import SummaryCollector
from tests.conftest import ASSETS, IN_CI, need

SCRIPT_LABEL = "<script>document.body.setAttribute('data-pwned','label')</script>"
IMG_NAME = "\"><img src=x onerror=\"document.body.setAttribute('data-pwned','file')\">.jpg"
TEXT = "Angela Merkel <img src=x onerror=\"document.body.setAttribute('data-pwned','text')\"> met <b>Macron</b>"

# Loads the gallery in a frame, waits for every image, then writes what it found into its own DOM as JSON.
PROBE = """<!doctype html><html><body><iframe id="f" src="%s" width="1600" height="6000"></iframe><script>
document.getElementById('f').addEventListener('load', function () {
  var doc = this.contentDocument, imgs = Array.from(doc.querySelectorAll('img'));
  function text(selector) {
    return Array.from(doc.querySelectorAll(selector)).map(function (e) { return e.textContent; });
  }
  var reported = false;
  function report() {
    if (reported) return;
    reported = true;
    var out = document.createElement('pre'); out.id = 'probe';
    out.textContent = JSON.stringify({
      images: imgs.map(function (i) { return [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]; }),
      pwned: doc.body.getAttribute('data-pwned'), cards: doc.querySelectorAll('.card').length,
      scripts: text('script'), handlers: doc.querySelectorAll('[onerror],[onload]').length,
      keys: text('.card b'), tags: text('.tag'), cells: text('td'), texts: text('.card .text'),
      marks: text('mark sub'), failed: text('.card.failed > div'), boxes: text('svg g.a text'),
      rows: Array.from(doc.querySelectorAll('tr.label-row')).map(function (r) { return r.dataset.label; }),
      visible: JSON.parse(doc.getElementById('state').getAttribute('data-visible-labels'))});
    document.body.appendChild(out);
  }
  Promise.all(imgs.map(function (i) {
    return i.complete ? null : new Promise(function (done) { i.onload = i.onerror = done; });
  })).then(report);
  setTimeout(report, 8000);  // an image that never settles must not hang the probe
});
</script></body></html>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "needs headless chromium to render the preview (apt-get install chromium)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _chromium(binary: str, profile: Path, *arguments: str) -> str:
    command = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def read_probe(binary: str, probe: Path, profile: Path, budget_ms: int, window: str) -> dict:
    """Load ``probe`` (a page that frames the gallery and writes what it finds as JSON into ``<pre id=probe>``)
    in chromium and return that report."""
    dom = _chromium(
        binary,
        profile,
        "--allow-file-access-from-files",
        f"--virtual-time-budget={budget_ms}",
        f"--window-size={window}",
        "--dump-dom",
        probe.as_uri(),
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not report; chromium gave:\n{dom[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def _probe(binary: str, page: Path) -> dict:
    probe = page.parent.parent / "probe.html"
    probe.write_text(PROBE % page.relative_to(probe.parent).as_posix(), encoding="utf-8")
    return read_probe(binary, probe, page.parent.parent / "profile", 15000, "1600,6000")


def test_gallery_shows_hostile_names_as_text(chromium, engine_onnx, tmp_path):
    bus = need(ASSETS / "images" / "ultralytics" / "bus.jpg")
    zidane = need(ASSETS / "images" / "ultralytics" / "zidane.jpg")
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(bus, source / IMG_NAME)
    shutil.copy(zidane, source / "zidane.jpg")
    out = tmp_path / "out"
    report = label([source], engine_onnx, out=out, dry_run=True, label_map={"bus": SCRIPT_LABEL})
    assert report.summary["per_label"][SCRIPT_LABEL] == 1

    page = out / "preview" / "index.html"
    found = _probe(chromium, page)
    assert found["pwned"] is None  # no payload ran
    # and none became an element: the page's own script is the only one (its CSP lets no other run)
    assert found["scripts"] == [SCRIPT] and found["handlers"] == 0
    assert found["cards"] == 2
    assert [src for src, *_ in found["images"]] == sorted(
        "images/" + p.name for p in (out / "preview" / "images").iterdir()
    )
    for src, width, height in found["images"]:  # every overlay loaded, at its image's size
        expected = cv2.imread(str(out / "preview" / src)).shape
        assert (height, width) == expected[:2], src
    # the hostile strings are there, as text
    assert found["keys"] == [IMG_NAME, "zidane.jpg"]
    assert f"{SCRIPT_LABEL} 0.94" in found["tags"] and f"{SCRIPT_LABEL} 0.94" in found["boxes"]
    assert SCRIPT_LABEL in found["cells"] and SCRIPT_LABEL in found["rows"]
    assert found["visible"][SCRIPT_LABEL] == 1  # the page counts it by its name, at the run's threshold

    screenshot = tmp_path / "gallery.png"  # kept with pytest --basetemp=DIR, to look at
    _chromium(chromium, tmp_path / "profile", "--window-size=1280,1400", f"--screenshot={screenshot}", page.as_uri())
    shot = cv2.imread(str(screenshot))
    assert shot is not None and shot.shape[:2] == (1400, 1280)
    assert float(shot.std()) > 20  # drawn, not a blank page


def test_text_and_failure_cards_show_hostile_text_as_text(chromium, tmp_path):
    start = TEXT.index("Macron")
    entities = Entities.from_records(
        [
            {"start": 0, "end": 13, "score": 0.99, "class_id": 0, "label": SCRIPT_LABEL, "word": "angela merkel"},
            {"start": start, "end": start + 6, "score": 0.9, "class_id": 1, "label": "PER", "word": "macron"},
        ]
    )
    predictions = [
        Prediction(0, IMG_NAME, IMG_NAME, result=entities, text=TEXT),
        Prediction(1, "x.txt", "x.txt", error=f"cannot read {IMG_NAME}: <b>gone</b>", text=""),
    ]
    out = tmp_path / "out"
    summary = SummaryCollector(out, (SCRIPT_LABEL, "PER"), {"model": SCRIPT_LABEL.replace("label", "model")})
    preview = PreviewWriter(out, summary, 5)
    for prediction in predictions:
        summary.write(prediction)
        preview.write(prediction)
    summary.close()
    (page,) = preview.close()

    found = _probe(chromium, page)
    assert found["pwned"] is None and found["scripts"] == [SCRIPT] and found["handlers"] == 0
    assert found["cards"] == 2 and found["images"] == []
    assert found["keys"] == [IMG_NAME, "x.txt"]
    shown = found["texts"][0]
    assert shown.startswith("Angela Merkel") and "<img src=x onerror=" in shown and "<b>Macron" in shown
    assert found["marks"] == [f"{SCRIPT_LABEL} 0.99", "PER 0.90"]
    assert f"cannot read {IMG_NAME}: <b>gone</b>" in found["failed"]
