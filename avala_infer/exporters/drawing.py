"""What the preview burns into its pictures with OpenCV's built-in fonts (no font files, no network): the class
colors, and semantic masks tinted with a legend (boxes, instance masks and classes are drawn by the gallery
page over the picture, so its threshold slider can hide them)."""

from __future__ import annotations

import cv2
import numpy as np

from avala_infer.annotations import SemanticMask

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
