"""``frames``: a light CPU video encoder (no weights): HOG plus a colour thumbnail per face.

For each sampled frame (face crop when ``face_crop``): a histogram of oriented
gradients of the 48x48 grey face (OpenCV's ``HOGDescriptor``: 8-pixel cells,
16-pixel blocks, 9 bins -> 324 numbers; shape of brows, eyes and mouth) and the
8x8 RGB thumbnail scaled to [0, 1] (192 numbers; colour and shading). Frames ->
``seq``, their mean -> ``vector`` (``DIM`` = 516).
"""

from __future__ import annotations

import numpy as np

from mer.encoders.base import Encoder, video_path
from mer.encoders.video import VideoClip, sample_clip

FACE = 48
THUMB = 8
DIM = 324 + THUMB * THUMB * 3


class FramesEncoder(Encoder):
    """HOG + thumbnail of the face in each sampled frame (516-d)."""

    alias = "frames"
    role = "video"
    spec_fields = ("num_frames", "face_crop", "seq_len", "seq_dtype")

    def __init__(self, spec, device="cpu"):
        super().__init__(spec, device)
        import cv2

        self._hog = cv2.HOGDescriptor((FACE, FACE), (16, 16), (16, 16), (8, 8), 9)

    @property
    def dim(self) -> int:
        return DIM

    def prepare(self, row: dict) -> VideoClip:
        return sample_clip(video_path(row), self.spec.num_frames, self.spec.face_crop, FACE)

    def frame_vector(self, rgb: np.ndarray) -> np.ndarray:
        """HOG of the grey face and its RGB thumbnail, one ``DIM`` vector."""
        import cv2

        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        hog = self._hog.compute(grey).reshape(-1)
        thumb = cv2.resize(rgb, (THUMB, THUMB), interpolation=cv2.INTER_AREA).reshape(-1) / 255.0
        return np.concatenate([hog, thumb]).astype(np.float32)

    def _encode(self, batch: list[VideoClip]):
        return [self.finish(np.stack([self.frame_vector(f) for f in clip.frames])) for clip in batch]
