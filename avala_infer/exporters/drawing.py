"""Box overlays drawn with OpenCV's built-in fonts (no font files, no network)."""

from __future__ import annotations

import cv2
import numpy as np

from avala_infer.annotations import Detections

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


def draw_detections(image: np.ndarray, detections: Detections, max_side: int = 1024) -> np.ndarray:
    """A copy of ``image`` scaled to at most ``max_side`` with masks (translucent), boxes, labels and scores."""
    scale = min(1.0, max_side / max(image.shape[:2]))
    canvas = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image.copy()
    if detections.mask is not None and len(detections):
        overlay = canvas.copy()
        size = (canvas.shape[1], canvas.shape[0])
        for mask, cid in zip(detections.mask, detections.class_id):
            if scale < 1:
                mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
            overlay[mask] = color_for(cid)
        canvas = cv2.addWeighted(overlay, 0.45, canvas, 0.55, 0)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    font_scale = max(0.4, max(canvas.shape[:2]) / 1400)
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
