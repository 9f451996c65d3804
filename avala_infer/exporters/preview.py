"""Dry-run previews: overlays for the first K items and a self-contained ``index.html`` gallery.

``preview/index.html`` needs nothing but the ``preview/images/`` folder beside it: no scripts, fonts or
styles from anywhere else. The gallery shows the run's summary (counts per label, score histogram, counts
at several thresholds, speed) and one card per previewed item; failed items show their reason. Image cards
show boxes and instance masks, semantic masks with a legend, or class captions; text cards show the text with
its class tags, or with its entity spans highlighted in their label's color (the first 2,000 characters).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import cv2

from avala_infer.annotations import Entities, Prediction
from avala_infer.engine.loaders import read_image
from avala_infer.engine.sources import Item
from avala_infer.errors import AvalaInferError
from avala_infer.exporters.base import safe_relative_path
from avala_infer.exporters.drawing import color_for, draw_result
from avala_infer.exporters.summary import SummaryCollector

DEFAULT_PREVIEW_COUNT = 50

_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:20px}table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:3px 10px;border-bottom:1px solid #ddd;
text-align:left}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:14px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}.card img{width:100%;height:auto}
.card.failed{border-color:#d33;color:#a00}.tag{display:inline-block;padding:1px 6px;margin:2px;border-radius:3px;
color:#fff;font-size:12px}.bar{display:inline-block;background:#4a7;height:12px;vertical-align:middle}
.muted{color:#777;font-size:12px}.text{white-space:pre-wrap;font-size:13px;line-height:1.7}
mark{padding:1px 2px;border-radius:3px}mark sub{font-size:10px;margin-left:2px;color:#222}
"""

TEXT_SHOWN = 2000


def _highlighted(text: str, entities: Entities | None) -> str:
    """The text, escaped, with entity spans in ``<mark>`` tinted by label; only the first TEXT_SHOWN chars."""
    e = html.escape
    shown = text[:TEXT_SHOWN]
    parts, at = [], 0
    if entities is not None:
        for start, end, cid, name, score in sorted(
            zip(entities.start, entities.end, entities.class_id, entities.class_name, entities.confidence)
        ):
            start, end = int(start), int(end)
            if start < at or start >= len(shown):
                continue  # overlapping (aggregation none may repeat) or beyond what is shown
            parts.append(e(shown[at:start]))
            color = _hex(color_for(int(cid)))
            parts.append(
                f"<mark style='background:{color}55;border-bottom:2px solid {color}'>{e(shown[start:end])}"
                f"<sub>{e(str(name))} {float(score):.2f}</sub></mark>"
            )
            at = end
    parts.append(e(shown[at:]))
    more = f"<span class='muted'> [+{len(text) - TEXT_SHOWN} characters]</span>" if len(text) > TEXT_SHOWN else ""
    return "".join(parts) + more


def _safe_name(index: int, key: str) -> str:
    """A flat file name for an item's overlay: unique (the run's index first), portable, inside ``images/``."""
    return f"{index:06d}_" + re.sub(r"[^A-Za-z0-9._-]+", "_", safe_relative_path(key).stem)[:80] + ".jpg"


def _hex(bgr: tuple[int, int, int]) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


class PreviewWriter:
    def __init__(self, out_dir: Path, summary: SummaryCollector, count: int = DEFAULT_PREVIEW_COUNT) -> None:
        self.root = out_dir / "preview"
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self.summary = summary
        self.count = count
        self.cards: list[dict] = []  # at most ``count`` small dicts

    def write(self, prediction: Prediction) -> None:
        if len(self.cards) >= self.count:
            return
        result = prediction.result
        card = {
            "key": prediction.key,
            "source": prediction.source,
            "error": prediction.error,
            "image": None,
            "text": None,
            "labels": [
                (str(n), int(c), float(s)) for n, c, s in zip(result.class_name, result.class_id, result.confidence)
            ],
        }
        if prediction.text is not None:
            card["text"] = _highlighted(prediction.text, result if isinstance(result, Entities) else None)
        elif prediction.ok and not prediction.source.startswith("<"):
            try:
                image = read_image(Item(prediction.index, prediction.source, prediction.key), {})
            except AvalaInferError as exc:  # the file changed since it was labeled
                card["error"] = f"preview not drawn: {exc}"
            else:
                name = _safe_name(prediction.index, prediction.key)
                cv2.imwrite(
                    str(self.root / "images" / name),
                    draw_result(image, result),
                    [cv2.IMWRITE_JPEG_QUALITY, 85],
                )
                card["image"] = f"images/{name}"
        self.cards.append(card)

    def abort(self) -> None:
        """Nothing is open: the overlays drawn so far stay, ``index.html`` is not written."""

    def close(self) -> list[Path]:
        path = self.root / "index.html"
        path.write_text(self._render(self.summary.as_dict()), encoding="utf-8")
        return [path]

    def _render(self, summary: dict) -> str:
        e = html.escape
        settings = summary.get("settings", {})
        parts = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>avala-infer preview</title>"
            f"<style>{_STYLE}</style></head><body>"
        ]
        parts.append(f"<h1>Dry run: {e(str(settings.get('model', '')))}</h1>")
        parts.append(
            f"<p>{summary['items']} items, {summary['succeeded']} labeled, {summary['failed']} failed, "
            f"{summary['annotations']} annotations; {summary['throughput_items_per_s']} items/s. "
            f"<span class='muted'>confidence &ge; {e(str(settings.get('confidence_threshold')))}, "
            f"showing the first {len(self.cards)} items. Nothing was written to any annotation file.</span></p>"
        )
        parts.append("<table><tr><th>label</th><th>count</th></tr>")
        for name, count in sorted(summary["per_label"].items(), key=lambda kv: -kv[1]):
            parts.append(f"<tr><td>{e(name)}</td><td>{count}</td></tr>")
        parts.append("</table><table><tr><th>score</th><th>annotations</th><th></th></tr>")
        peak = max([b["count"] for b in summary["score_histogram"]] + [1])
        for b in summary["score_histogram"]:
            if b["count"]:
                width = int(200 * b["count"] / peak)
                parts.append(
                    f"<tr><td>{b['from']:.2f}-{b['to']:.2f}</td><td>{b['count']}</td>"
                    f"<td><span class='bar' style='width:{width}px'></span></td></tr>"
                )
        parts.append("</table><table><tr><th>at threshold</th><th>annotations</th></tr>")
        for t, c in summary["annotations_at_threshold"].items():
            parts.append(f"<tr><td>&ge; {e(t)}</td><td>{c}</td></tr>")
        parts.append("</table><div class='grid'>")
        for card in self.cards:
            cls = "card failed" if card["error"] else "card"
            parts.append(f"<div class='{cls}'>")
            if card["image"]:
                parts.append(f"<img loading='lazy' src='{e(card['image'])}' alt='{e(card['key'])}'>")
            parts.append(f"<div><b>{e(card['key'])}</b></div>")
            if card["text"] is not None:
                parts.append(f"<div class='text'>{card['text']}</div>")
            if card["error"]:
                parts.append(f"<div>{e(card['error'])}</div>")
            tags = "".join(
                f"<span class='tag' style='background:{_hex(color_for(c))}'>{e(n)} {s:.2f}</span>"
                for n, c, s in card["labels"]
            )
            parts.append(f"<div>{tags or '<span class=muted>no annotations</span>'}</div></div>")
        parts.append("</div></body></html>")
        return "\n".join(parts)
