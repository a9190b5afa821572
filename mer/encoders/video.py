"""Frame sampling plus face crop, shared by the video encoders (``hf_clip``, ``frames``).

Replaces MERTools' OpenFace step (Windows-only binary) with OpenCV's bundled
face detector (``mer.corpus.faces``): the largest face of each sampled frame, or
the whole frame when none is found; the count of such frames travels with the
clip so the extract stage can report it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from mer.corpus.media import load_frames


@dataclass
class VideoClip:
    """Decoded frames of one sample, ready for a video encoder.

    Attributes:
        frames: uint8 (n, size, size, 3) RGB, face crops or whole frames.
        no_face: frames where no face was found (whole frame used instead).
    """

    frames: np.ndarray
    no_face: int = 0


def sample_clip(path: str, num_frames: int, face_crop: bool, size: int) -> VideoClip:
    """Sample ``num_frames`` frames uniformly, crop faces, fit each to ``size`` x ``size``.

    Fitting keeps the aspect ratio (centre crop), as CLIP's own processor does,
    so square face crops and wide whole frames end in one fixed-shape array.
    """
    frames = load_frames(path, num_frames)
    out, missing = [], 0
    for frame in frames:
        if face_crop:
            from mer.corpus.faces import largest_face_crop

            frame, found = largest_face_crop(frame)  # the whole frame when no face is found
            missing += not found
        image = ImageOps.fit(Image.fromarray(frame), (size, size), Image.Resampling.BILINEAR)
        out.append(np.asarray(image))
    return VideoClip(frames=np.stack(out), no_face=missing)
