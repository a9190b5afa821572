"""Largest-face crop with OpenCV's bundled Haar cascade (stands in for MERTools' OpenFace).

MERTools aligns faces with OpenFace before its visual encoders; we keep the
idea (the encoder sees the face, not the room) with a detector that ships inside
``opencv-python-headless`` 4.x, so nothing is downloaded at run time. Our
choice: the largest detection, grown by ``margin`` on each side; no alignment.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mer.errors import MerError

CASCADE = "haarcascade_frontalface_default.xml"


@lru_cache(maxsize=1)
def _detector():
    import cv2

    if not hasattr(cv2, "CascadeClassifier"):
        raise MerError(f"OpenCV {cv2.__version__} has no Haar cascades: install opencv-python-headless 4.x")
    detector = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
    if detector.empty():
        raise MerError(f"cannot load {cv2.data.haarcascades + CASCADE}")
    return detector


def detect_faces(frame_rgb: np.ndarray, min_size: int = 24) -> np.ndarray:
    """Face boxes ``(n, 4)`` as ``x, y, w, h`` in pixels (``n`` may be 0)."""
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2GRAY))
    boxes = _detector().detectMultiScale(gray, scaleFactor=1.05, minNeighbors=3, minSize=(min_size, min_size))
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def largest_face_crop(frame_rgb: np.ndarray, margin: float = 0.2) -> tuple[np.ndarray, bool]:
    """Crop the largest detected face, grown by ``margin`` of its size on each side.

    Args:
        frame_rgb: uint8 ``(H, W, 3)`` RGB frame.
        margin: fraction of the box width/height added on every side (clipped to the frame).

    Returns:
        ``(crop, found)``: the face crop and True, or the whole frame and False
        when no face is detected (so callers always get an image).
    """
    boxes = detect_faces(frame_rgb)
    if len(boxes) == 0:
        return frame_rgb, False
    x, y, w, h = boxes[np.argmax(boxes[:, 2] * boxes[:, 3])]
    height, width = frame_rgb.shape[:2]
    dx, dy = int(round(w * margin)), int(round(h * margin))
    x0, y0 = max(0, x - dx), max(0, y - dy)
    x1, y1 = min(width, x + w + dx), min(height, y + h + dy)
    return frame_rgb[y0:y1, x0:x1], True
