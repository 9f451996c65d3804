"""Overlays drawn with OpenCV's built-in fonts (no font files, no network): boxes and instance masks, semantic
masks with a legend, class captions."""

from __future__ import annotations

import cv2
import numpy as np

from avala_infer.annotations import Classifications, Detections, Result, SemanticMask

PALETTE = [
    (56, 56, 255),
    (151, 157, 255),
    (31, 112, 255),
    (29, 178, 255),
    (49, 210, 207),
    (10, 249, 72),
    (23, 204, 146),
    (134, 219, 61),
    (52, 147, 26),
    (187, 212, 0),
    (168, 153, 44),
    (255, 194, 0),
    (147, 69, 52),
    (255, 115, 100),
    (236, 24, 0),
    (255, 56, 132),
    (133, 0, 82),
    (255, 56, 203),
    (200, 149, 255),
    (199, 55, 255),
]  # BGR


def color_for(class_id: int) -> tuple[int, int, int]:
    return PALETTE[int(class_id) % len(PALETTE)]


def _scaled(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    scale = min(1.0, max_side / max(image.shape[:2]))
    canvas = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image.copy()
    return canvas, scale


def _font_scale(canvas: np.ndarray) -> float:
    return max(0.4, max(canvas.shape[:2]) / 1400)


def _text_box(canvas: np.ndarray, lines: list[tuple[str, tuple[int, int, int]]], corner: str = "top-left") -> None:
    """Filled, colored label boxes stacked from a corner, white text."""
    font_scale = _font_scale(canvas)
    y = 4
    for text, color in lines:
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        x = 4 if corner == "top-left" else max(0, canvas.shape[1] - tw - 10)
        cv2.rectangle(canvas, (x, y), (x + tw + 6, y + th + base + 4), color, -1)
        cv2.putText(
            canvas, text, (x + 3, y + th + 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA
        )
        y += th + base + 6


def draw_result(image: np.ndarray, result: Result, max_side: int = 1024) -> np.ndarray:
    """The preview overlay for any image model type's result."""
    if isinstance(result, SemanticMask):
        return draw_semantic(image, result, max_side)
    if isinstance(result, Classifications):
        return draw_classes(image, result, max_side)
    return draw_detections(image, result, max_side)


def draw_semantic(image: np.ndarray, semantic: SemanticMask, max_side: int = 1024) -> np.ndarray:
    """Each class's pixels tinted with its color, and a legend of the classes present with their share.

    ``image`` is the picture the mask was predicted on, or a smaller copy of it (a thumbnail): the class map is
    scaled to the canvas."""
    canvas, _ = _scaled(image, max_side)
    if len(semantic):
        class_map = semantic.class_map
        if class_map.shape != canvas.shape[:2]:
            class_map = cv2.resize(class_map, (canvas.shape[1], canvas.shape[0]), interpolation=cv2.INTER_NEAREST)
        colors = np.array([color_for(i) for i in range(len(semantic.labels))] + [(0, 0, 0)], dtype=np.uint8)
        labeled = class_map >= 0
        overlay = canvas.copy()
        overlay[labeled] = colors[class_map[labeled]]
        canvas = cv2.addWeighted(overlay, 0.5, canvas, 0.5, 0)
        total = semantic.class_map.size
        legend = [
            (f"{name} {100 * area / total:.1f}%", color_for(cid))
            for cid, name, area in zip(semantic.class_id, semantic.class_name, semantic.area)
        ]
        _text_box(canvas, legend, "top-right")
    return canvas


def draw_classes(image: np.ndarray, classes: Classifications, max_side: int = 1024, shown: int = 3) -> np.ndarray:
    """The best classes with their scores as a caption in the top-left corner."""
    canvas, _ = _scaled(image, max_side)
    lines = [
        (f"{name} {score:.2f}", color_for(cid))
        for name, score, cid in zip(classes.class_name[:shown], classes.confidence[:shown], classes.class_id[:shown])
    ]
    _text_box(canvas, lines or [("no class above threshold", (90, 90, 90))])
    return canvas


def draw_detections(image: np.ndarray, detections: Detections, max_side: int = 1024) -> np.ndarray:
    """A copy of ``image`` scaled to at most ``max_side`` with masks (translucent), boxes, labels and scores."""
    canvas, scale = _scaled(image, max_side)
    if detections.mask is not None and len(detections):
        overlay = canvas.copy()
        size = (canvas.shape[1], canvas.shape[0])
        for mask, cid in zip(detections.mask, detections.class_id):
            if scale < 1:
                mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
            overlay[mask] = color_for(cid)
        canvas = cv2.addWeighted(overlay, 0.45, canvas, 0.55, 0)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    font_scale = _font_scale(canvas)
    for box, score, cid, name in zip(
        detections.xyxy, detections.confidence, detections.class_id, detections.class_name
    ):
        x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
        color = color_for(cid)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        text = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 4, top + th + base + 2), color, -1)
        cv2.putText(
            canvas, text, (x1 + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA
        )
    return canvas
