"""Dry-run previews: an interactive, self-contained ``index.html`` gallery of the first K items.

``preview/index.html`` needs nothing but the ``preview/images/`` folder beside it: no scripts, fonts or
styles from anywhere else (its Content-Security-Policy lets only its own inline script run). A dry run
predicts at a low floor (see :func:`avala_infer.exporters.summary.dry_run_options`), and the page draws the
annotations itself over the plain images: boxes and instance masks (polygons) in SVG, classes and entity
spans as tags and highlights, each with its label and full score. A threshold slider (starting at the run's
threshold, or at ``#conf=0.6`` from the address) and a label filter hide and show them live and update the
per-label counts: those of the previewed items, and the whole run's (from the summary's counts at every
0.01 step). A prompted model (open-vocabulary detection: each box has the ``prompt`` that scored it) adds a
table of its prompts under the labels': per label and prompt, the whole run's count at the slider (from the
summary's counts at every 0.01 step), the previewed items' count, and what was predicted at the floor with its
mean and best score. The chosen settings are shown as the ``avala-infer auto-label create ...`` command and the
``client.auto_label_jobs.create(...)`` call to copy. Semantic masks keep the run's overlay drawn into the
picture (their thresholds apply per pixel): the slider does not apply to them.

The pictures are the ones the pipeline decoded: the engine hands each image to :meth:`PreviewWriter.take_image`
(``Engine.stream(..., on_image=preview.take_image)``), which keeps a thumbnail of the items the gallery shows;
no file is read or decoded a second time. Memory stays flat: only those thumbnails are kept, each until its card
is written; each card is written to a part file as its item comes, and ``close`` streams it into the page after
the summary. Every label, key and text is escaped; the script only ever sets ``textContent``.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
import threading
from pathlib import Path

import cv2
import numpy as np

from avala_infer.annotations import Classifications, Detections, Entities, Prediction, SemanticMask
from avala_infer.exporters.base import remove_quietly, safe_relative_path
from avala_infer.exporters.drawing import color_for, draw_semantic
from avala_infer.exporters.preview_page import CSP, SCRIPT, STYLE
from avala_infer.exporters.summary import FINE, SCORE_BINS, SummaryCollector

DEFAULT_PREVIEW_COUNT = 50
TEXT_SHOWN = 2000
TABLE_ROWS = 15  # the per-label and per-prompt tables show this many rows; the rest on demand
MAX_SIDE = 1024  # previewed pictures are at most this wide or high

e = html.escape


def _hex(bgr: tuple[int, int, int]) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


def _ink(bgr: tuple[int, int, int]) -> str:
    """Black or white, whichever contrasts more with the label's color (WCAG relative luminance)."""

    def linear(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    b, g, r = bgr
    luminance = 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
    return "#000" if (luminance + 0.05) / 0.05 > 1.05 / (luminance + 0.05) else "#fff"


def _score(value) -> str:
    """The float32 score in full: the page compares it as the label filter does."""
    return repr(float(np.float32(value)))


def _data(name: str, score, prompt=None) -> str:
    """An annotation's attributes for the page's script: its label, full score and (a prompted model's box) the
    prompt that scored it."""
    prompted = "" if prompt is None else f" data-prompt='{e(str(prompt))}'"
    return f"data-label='{e(str(name))}' data-score='{_score(score)}'{prompted}"


def _tag(name: str, class_id: int, score, counted: bool, prompt=None) -> str:
    color = color_for(class_id)
    cls = "tag a" if counted else "tag"
    said = "" if prompt is None or str(prompt) == str(name) else f" title='prompt: {e(str(prompt))}'"
    return (
        f"<span class='{cls}' {_data(name, score, prompt)}{said} "
        f"style='background:{_hex(color)};color:{_ink(color)}'>{e(str(name))} {float(score):.2f}</span>"
    )


def _prompt_of(det: Detections, i: int):
    return None if det.prompt is None else det.prompt[i]


def _highlighted(text: str, entities: Entities | None) -> str:
    """The text, escaped, with entity spans in ``<mark>`` tinted by label; only the first TEXT_SHOWN chars.

    Overlapping spans (aggregation ``none`` may repeat) keep the higher score."""
    shown = text[:TEXT_SHOWN]
    chosen: list[tuple[int, int, int, str, float]] = []
    if entities is not None:
        spans = zip(entities.start, entities.end, entities.class_id, entities.class_name, entities.confidence)
        taken = np.zeros(len(shown) + 1, dtype=bool)
        for start, end, cid, name, score in sorted(spans, key=lambda s: -float(s[4])):
            start, end = int(start), min(int(end), len(shown))
            if start >= len(shown) or end <= start or taken[start:end].any():
                continue
            taken[start:end] = True
            chosen.append((start, end, int(cid), str(name), score))
    parts, at = [], 0
    for start, end, cid, name, score in sorted(chosen):
        parts.append(e(shown[at:start]))
        color = _hex(color_for(cid))
        parts.append(
            f"<mark class='a' {_data(name, score)} style='background:{color}55;border-bottom:2px solid {color}'>"
            f"{e(shown[start:end])}<sub>{e(name)} {float(score):.2f}</sub></mark>"
        )
        at = end
    parts.append(e(shown[at:]))
    more = f"<span class='muted'> [+{len(text) - TEXT_SHOWN} characters]</span>" if len(text) > TEXT_SHOWN else ""
    return "".join(parts) + more


def _four(value) -> str:
    """A score of summary.json (rounded to 4 places there) as it is written there; none as a dash."""
    return "&ndash;" if value is None else f"{value:.4f}"


def _safe_name(index: int, key: str) -> str:
    """A flat file name for an item's picture: unique (the run's index first), portable, inside ``images/``."""
    return f"{index:06d}_" + re.sub(r"[^A-Za-z0-9._-]+", "_", safe_relative_path(key).stem)[:80] + ".jpg"


@dataclasses.dataclass(frozen=True)
class _Picture:
    """What the preview keeps of an item's decoded image: a copy at most ``MAX_SIDE`` pixels on its long side, the
    image's own size, and the scale between the two."""

    thumbnail: np.ndarray
    width: int
    height: int
    scale: float

    @classmethod
    def of(cls, image: np.ndarray) -> _Picture:
        height, width = image.shape[:2]
        scale = min(1.0, MAX_SIDE / max(height, width))
        if scale < 1:
            thumbnail = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        else:
            thumbnail = image.copy()  # the pipeline's array goes on to the model: never keep it
        return cls(thumbnail, width, height, scale)


def _mask_path(mask: np.ndarray, box, scale: float) -> str:
    """An SVG path (even-odd, holes kept) of an instance mask, traced at the preview's scale, in image pixels."""
    h, w = mask.shape
    x1, y1 = max(0, int(math.floor(box[0])) - 2), max(0, int(math.floor(box[1])) - 2)
    x2, y2 = min(w, int(math.ceil(box[2])) + 2), min(h, int(math.ceil(box[3])) + 2)
    crop = mask[y1:y2, x1:x2]
    if crop.size == 0 or not crop.any():
        return ""
    crop = crop.astype(np.uint8)
    if scale < 1:
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    sx, sy = (x2 - x1) / crop.shape[1], (y2 - y1) / crop.shape[0]
    path = []
    for contour in contours:
        points = cv2.approxPolyDP(contour, 0.6, True).reshape(-1, 2)
        if len(points) < 3:
            continue
        path.append("M" + "L".join(f"{x1 + (px + 0.5) * sx:.1f} {y1 + (py + 0.5) * sy:.1f}" for px, py in points) + "Z")
    return "".join(path)


def _detections_svg(det: Detections, width: int, height: int, scale: float) -> str:
    """Boxes (and instance masks) as SVG in the image's own pixels, lowest score first (the best on top)."""
    side = max(width, height)
    stroke, font = max(1.5, side / 400), max(9.0, side / 32)
    parts = [f"<svg viewBox='0 0 {width} {height}' preserveAspectRatio='none'>"]
    for i in np.argsort(det.confidence, kind="stable"):
        name, cid, score = str(det.class_name[i]), int(det.class_id[i]), det.confidence[i]
        color = color_for(cid)
        x1, y1, x2, y2 = (float(v) for v in det.xyxy[i])
        caption = f"{name} {float(score):.2f}"
        top = y1 - font * 1.25 if y1 - font * 1.25 >= 0 else y1
        parts.append(f"<g class='a' {_data(name, score, _prompt_of(det, i))}>")
        if det.mask is not None:
            d = _mask_path(det.mask[i], det.xyxy[i], scale)
            if d:
                parts.append(f"<path d='{d}' fill='{_hex(color)}' fill-opacity='0.4' fill-rule='evenodd'/>")
        parts.append(
            f"<rect x='{x1:.1f}' y='{y1:.1f}' width='{x2 - x1:.1f}' height='{y2 - y1:.1f}' fill='none' "
            f"stroke='{_hex(color)}' stroke-width='{stroke:.1f}'/>"
            f"<rect x='{x1:.1f}' y='{top:.1f}' width='{0.6 * font * len(caption) + font * 0.4:.1f}' "
            f"height='{font * 1.25:.1f}' fill='{_hex(color)}'/>"
            f"<text x='{x1 + font * 0.2:.1f}' y='{top + font:.1f}' font-size='{font:.1f}' "
            f"font-family='monospace' fill='{_ink(color)}'>{e(caption)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _image_tags(result) -> list[str]:
    """An image item's annotations as tags: classes best first, boxes by score, semantic classes by share."""
    if isinstance(result, SemanticMask):
        total = max(result.class_map.size, 1)
        return [
            f"<span class='tag' style='background:{_hex(color_for(c))};color:{_ink(color_for(c))}'>"
            f"{e(str(n))} {100 * a / total:.1f}%</span>"
            for c, n, a in zip(result.class_id, result.class_name, result.area)
        ]
    if isinstance(result, Classifications):
        return [_tag(n, c, s, True) for n, c, s in zip(result.class_name, result.class_id, result.confidence)]
    order = np.argsort(-result.confidence, kind="stable")
    return [
        _tag(result.class_name[i], result.class_id[i], result.confidence[i], False, _prompt_of(result, i))
        for i in order
    ]


class PreviewWriter:
    """Writes the gallery of the first ``count`` items; needs the run's :class:`SummaryCollector` (the same
    object the run feeds) for the page's header, counts and settings.

    It is fed every prediction of one stream, in order, and draws image items over the pictures the pipeline
    handed to :meth:`take_image`: an image item whose picture was not handed over gets a card without one."""

    def __init__(self, out_dir: Path, summary: SummaryCollector, count: int = DEFAULT_PREVIEW_COUNT) -> None:
        self.root = out_dir / "preview"
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self.summary = summary
        self.count = count
        self.written = 0
        self.part = self.root / ".cards.part"
        self._file = None
        self._pictures: dict[int, _Picture] = {}  # by position in the stream, until the item's card is written
        self._pictures_lock = threading.Lock()

    def take_image(self, position: int, image: np.ndarray) -> None:
        """Keep a thumbnail of ``image``, the decoded picture of the stream's item at ``position`` (0 for the
        first), if the gallery shows that item. Pass it to the engine: ``engine.stream(items, options,
        on_image=preview.take_image)``; it is called from the loader threads, ahead of :meth:`write`."""
        if position < self.count:
            picture = _Picture.of(image)
            with self._pictures_lock:
                self._pictures[position] = picture

    def write(self, prediction: Prediction) -> None:
        if self.written >= self.count:
            return
        with self._pictures_lock:
            picture = self._pictures.pop(self.written, None)
        if self._file is None:
            self._file = self.part.open("w", encoding="utf-8")
        self._file.write(self._card(prediction, picture) + "\n")
        self.written += 1

    def _card(self, prediction: Prediction, picture: _Picture | None) -> str:
        result, error = prediction.result, prediction.error
        figure = body = ""
        tags: list[str] = []
        if prediction.text is not None:
            entities = result if isinstance(result, Entities) else None
            body = f"<div class='text'>{_highlighted(prediction.text, entities)}</div>"
            if isinstance(result, Classifications):
                tags = [_tag(n, c, s, True) for n, c, s in zip(result.class_name, result.class_id, result.confidence)]
        elif prediction.ok:
            tags = _image_tags(result)
            if picture is not None:
                figure = self._figure(prediction, picture)
        cls = "card failed" if error else "card"
        parts = [f"<div class='{cls}'>", figure, f"<div><b>{e(prediction.key)}</b></div>", body]
        if error:
            parts.append(f"<div>{e(error)}</div>")
        if prediction.ok:
            parts.append(f"<div>{''.join(tags) or '<span class=muted>no annotations</span>'}</div>")
        parts.append("</div>")
        return "".join(parts)

    def _figure(self, prediction: Prediction, shown: _Picture) -> str:
        """The item's picture, written into ``images/``, with its boxes and masks as SVG over it (semantic masks
        drawn into it)."""
        result = prediction.result
        name = _safe_name(prediction.index, prediction.key)
        svg = ""
        if isinstance(result, SemanticMask):  # thresholds act per pixel: the run's overlay, drawn in
            picture = draw_semantic(shown.thumbnail, result, MAX_SIDE)
        else:
            picture = shown.thumbnail
            if isinstance(result, Detections):
                svg = _detections_svg(result, shown.width, shown.height, shown.scale)
        cv2.imwrite(str(self.root / "images" / name), picture, [cv2.IMWRITE_JPEG_QUALITY, 85])
        return (
            f"<figure><img loading='lazy' src='images/{e(name)}' alt='{e(prediction.key)}' "
            f"width='{picture.shape[1]}' height='{picture.shape[0]}'>{svg}</figure>"
        )

    def abort(self) -> None:
        """Close and remove the part file: the pictures drawn so far stay, ``index.html`` is not written."""
        self._pictures.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
        remove_quietly(self.part)

    def close(self) -> list[Path]:
        self._pictures.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
        path = self.root / "index.html"
        tmp = self.root / "index.html.tmp"
        try:
            with tmp.open("w", encoding="utf-8") as page:
                page.write(self._head(self.summary.as_dict()))
                page.write("<div class='grid'>\n")
                if self.part.exists():
                    with self.part.open(encoding="utf-8") as cards:
                        for line in cards:
                            page.write(line)
                page.write(f"</div><div id='zoom'></div><script>{SCRIPT}</script></body></html>\n")
            os.replace(tmp, path)
        except BaseException:
            remove_quietly(tmp)
            raise
        finally:
            remove_quietly(self.part)
        return [path]

    def _present(self, summary: dict) -> list[int]:
        """The labels the run predicted (their indexes), by count at the run's threshold, then at the floor."""
        s = self.summary
        labels = s.labels
        present = [j for j, name in enumerate(labels) if s.fine[j].any() or summary["per_label"].get(name)]
        present.sort(key=lambda j: (-summary["per_label"].get(labels[j], 0), -int(s.fine[j, 0]), j))
        return present

    def _rows(self, summary: dict) -> list[str]:
        """One table row per label the run predicted, in :meth:`_present`'s order."""
        s = self.summary
        labels = list(s.labels)
        semantic = summary.get("sweep") is None
        rows = []
        for j in self._present(summary):
            name, color = labels[j], color_for(j)
            if semantic:  # known at the run's threshold only
                fine = ["0"] * len(FINE)
                fine[self._start_step()] = str(summary["per_label"].get(name, 0))
            else:
                fine = [str(int(v)) for v in s.fine[j]]
            hist = s.label_histogram[j]
            peak = max(int(hist.max()), 1)
            bars = "".join(
                f"<rect x='{b * 100 / SCORE_BINS:.1f}' y='{22 - 22 * c / peak:.1f}' width='4.4' "
                f"height='{22 * c / peak:.1f}'/>"
                for b, c in enumerate(hist)
                if c
            )
            rows.append(
                f"<tr class='label-row' data-label='{e(name)}' data-fine='{' '.join(fine)}'>"
                f"<td><input type='checkbox' checked></td>"
                f"<td><span class='swatch' style='background:{_hex(color)}'></span>{e(name)}</td>"
                f"<td class='n n-run'></td><td class='n n-preview'></td>"
                f"<td><svg class='hist' viewBox='0 0 100 22' preserveAspectRatio='none'>{bars}"
                f"<line x1='0' x2='0' y1='0' y2='22'/></svg></td></tr>"
            )
        return rows

    def _prompt_rows(self, summary: dict) -> list[str]:
        """One row per label and prompt of a prompted model's boxes: labels in the label table's order, each one's
        prompts by count at the run's threshold, then at the floor. The whole run's count follows the slider from
        the prompt's counts at every 0.01 step (which agree with ``per_prompt``'s ``sweep`` at its steps); the
        rest is ``per_prompt`` as summary.json has it."""
        per_prompt = summary.get("per_prompt") or {}
        if not per_prompt:
            return []
        labels = list(self.summary.labels)
        order = {labels[j]: rank for rank, j in enumerate(self._present(summary))}
        entries = sorted(
            ((label, prompt, counts) for label, texts in per_prompt.items() for prompt, counts in texts.items()),
            key=lambda x: (order.get(x[0], len(order)), x[0], -x[2]["annotations"], -x[2]["predicted"], x[1]),
        )
        rows = []
        for label, prompt, counts in entries:
            fine = " ".join(str(int(v)) for v in self.summary.prompts[(label, prompt)].fine)
            swatch = (
                f"<span class='swatch' style='background:{_hex(color_for(labels.index(label)))}'></span>"
                if label in labels
                else ""
            )
            rows.append(
                f"<tr class='prompt-row' data-label='{e(label)}' data-prompt='{e(prompt)}' data-fine='{fine}'>"
                f"<td>{swatch}{e(label)}</td><td>{e(prompt)}</td>"
                f"<td class='n n-run'>{counts['annotations']}</td><td class='n n-preview'></td>"
                f"<td class='n n-predicted'>{counts['predicted']}</td>"
                f"<td class='n n-mean'>{_four(counts['mean_score'])}</td>"
                f"<td class='n n-max'>{_four(counts['max_score'])}</td></tr>"
            )
        return rows

    def _start_step(self) -> int:
        """The slider's first position: the run's threshold (never below the floor), in 0.01 steps."""
        threshold = self.summary.settings.get("confidence_threshold")
        threshold = self.summary.floor if threshold is None else float(threshold)
        return min(100, max(self._min_step(), round(threshold * 100)))

    def _min_step(self) -> int:
        return min(100, math.ceil(round(self.summary.floor * 100, 6)))

    def _head(self, summary: dict) -> str:
        settings = summary.get("settings", {})
        semantic = summary.get("sweep") is None and self.summary.semantic
        start, low = self._start_step(), self._min_step()
        known_from = start if semantic else low
        labels_setting = settings.get("labels")
        state = {
            "data-project": settings.get("project_uid") or "PROJECT_UID",
            "data-model-type": settings.get("model_type") or "",
            "data-aggregation": settings.get("aggregation") or "",
            "data-known-from": str(known_from),
            "data-run-labels-setting": json.dumps(labels_setting),
        }
        attributes = " ".join(f"{k}='{e(str(v))}'" for k, v in state.items())
        rows = self._rows(summary)
        table = rows[:TABLE_ROWS]
        more = rows[TABLE_ROWS:]
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<meta http-equiv='Content-Security-Policy' content=\"{e(CSP)}\">",
            f"<title>avala-infer preview</title><style>{STYLE}</style></head><body>",
            f"<div id='state' hidden {attributes}></div>",
            f"<h1>Dry run: {e(str(settings.get('model', '')))}</h1>",
            f"<p>{summary['items']} items, {summary['succeeded']} labeled, {summary['failed']} failed; "
            f"{summary['annotations']} annotations at the run's threshold "
            f"(&ge; {e(str(settings.get('confidence_threshold')))}); {summary['throughput_items_per_s']} items/s. "
            f"<span class='muted'>Predicted at &ge; {self.summary.floor:g} so that every threshold above can be "
            f"tried; showing the first {self.written} items. Nothing was written to any annotation file.</span></p>",
            "<div class='controls'><label>confidence <input type='range' id='conf' "
            f"min='{low / 100:.2f}' max='1' step='0.01' value='{start / 100:.2f}'"
            f"{' disabled' if semantic else ''}></label><span id='conf-value'></span>"
            "<span>previewed items: <b id='n-visible'></b> annotations shown; whole run: <b id='n-run'></b></span>",
        ]
        if semantic:
            parts.append(
                "<div class='muted'>Semantic masks are thresholded per pixel: the overlay shows the run's "
                "threshold; run again with another --confidence to compare.</div>"
            )
        parts += [
            "<pre class='cmd' id='cmd-cli'></pre><pre class='cmd' id='cmd-py'></pre></div>",
            "<div class='layout'><div><table><thead><tr><th></th><th>label</th><th>whole run</th>"
            "<th>previewed</th><th>scores 0&ndash;1 (all predicted)</th></tr></thead><tbody>",
            *table,
            "</tbody>",
        ]
        if more:
            parts += ["<tbody id='more-rows' hidden>", *more, "</tbody>"]
        parts.append("</table>")
        if more:
            show = f"show all {len(rows)} labels"
            parts.append(f"<button id='more-labels' data-show='{show}'>{show}</button> ")
        parts.append("<button id='all-labels'>all labels</button> <button id='no-labels'>no label</button>")
        parts += self._prompts_table(summary)
        parts.append("</div>")
        parts.append(self._at_thresholds(summary))
        parts.append("</div>")
        return "\n".join(parts)

    def _prompts_table(self, summary: dict) -> list[str]:
        """The Prompts table (a prompted model only), its rows past TABLE_ROWS on demand, as the labels'."""
        rows = self._prompt_rows(summary)
        if not rows:
            return []
        parts = [
            "<h2>Prompts</h2><table id='prompts'><thead><tr><th>label</th><th>prompt</th><th>whole run</th>"
            f"<th>previewed</th><th>predicted (&ge; {self.summary.floor:g})</th><th>mean score</th>"
            "<th>max score</th></tr></thead><tbody>",
            *rows[:TABLE_ROWS],
            "</tbody>",
        ]
        if len(rows) > TABLE_ROWS:
            show = f"show all {len(rows)} prompts"
            parts += [
                "<tbody id='more-prompt-rows' hidden>",
                *rows[TABLE_ROWS:],
                "</tbody></table>",
                f"<button id='more-prompts' data-show='{show}'>{show}</button>",
            ]
        else:
            parts.append("</table>")
        return parts

    @staticmethod
    def _at_thresholds(summary: dict) -> str:
        sweep = summary.get("sweep")
        if not sweep:
            return ""
        cells = "".join(
            f"<tr><td>&ge; {t:g}</td><td class='n'>{n}</td></tr>"
            for t, n in zip(sweep["thresholds"], sweep["annotations"])
        )
        return f"<div><table><thead><tr><th>at threshold</th><th>annotations</th></tr></thead>{cells}</table></div>"
