"""``hf_clip``: the CLIP vision tower over uniformly sampled (face-cropped) frames.

Paper: CLIP-ViT-large frame features (fine-tuned on the labeled set by
``mer.finetune``; point ``model`` at the exported folder). Default weights
``openai/clip-vit-large-patch14``.

Our choices where the paper is silent:
* per-frame embedding: the projected image embedding (``get_image_features``, as
  MERTools uses) when the checkpoint is a full CLIP model with a projection;
  the pooled CLS output of ``CLIPVisionModel`` for a vision-only checkpoint;
* ``num_frames`` frames -> ``seq`` (segment means when ``num_frames > seq_len``);
  their mean -> ``vector``;
* images go through ``CLIPImageProcessorPil`` (PIL; no torchvision here).
"""

from __future__ import annotations

import numpy as np

from mer.encoders.base import Encoder, quiet_transformers, torch_dtype, video_path
from mer.encoders.video import VideoClip, sample_clip

#: Side of the frames handed from decode to encode; CLIP's processor resizes again.
FRAME_SIZE = 224


class HFClipEncoder(Encoder):
    """CLIP vision tower -> one embedding per frame -> pooled vector and frame sequence."""

    alias = "hf_clip"
    role = "video"
    default_model = "openai/clip-vit-large-patch14"
    spec_fields = ("num_frames", "face_crop", "seq_len", "seq_dtype", "dtype")

    def __init__(self, spec, device="cpu"):
        super().__init__(spec, device)
        self.model = self.processor = None
        self._config = None

    def _has_projection(self) -> bool:
        return self.config().model_type == "clip"

    def config(self):
        """The checkpoint's config (cheap: one JSON file)."""
        if self._config is None:
            from transformers import AutoConfig

            self._config = AutoConfig.from_pretrained(self.model_name)
        return self._config

    @property
    def dim(self) -> int:
        cfg = self.config()
        return int(cfg.projection_dim if self._has_projection() else cfg.hidden_size)

    def prepare(self, row: dict) -> VideoClip:
        return sample_clip(video_path(row), self.spec.num_frames, self.spec.face_crop, FRAME_SIZE)

    def load(self) -> None:
        from transformers import CLIPImageProcessorPil, CLIPVisionModel, CLIPVisionModelWithProjection

        quiet_transformers()

        dtype = torch_dtype(self.spec.dtype, self.device)
        self.processor = CLIPImageProcessorPil.from_pretrained(self.model_name)
        if self._has_projection():
            # The vision tower's config does not inherit the full model's projection width.
            vision = self.config().vision_config
            vision.projection_dim = self.config().projection_dim
            self.model = CLIPVisionModelWithProjection.from_pretrained(self.model_name, config=vision, dtype=dtype)
        else:
            self.model = CLIPVisionModel.from_pretrained(self.model_name, dtype=dtype)
        self.model.to(self.device).eval()

    def _encode(self, batch: list[VideoClip]):
        import torch

        images = [frame for clip in batch for frame in clip.frames]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self.model(pixel_values=pixels.to(self.device, self.model.dtype))
        emb = (out.image_embeds if self._has_projection() else out.pooler_output).float().cpu().numpy()
        bounds = np.cumsum([0] + [len(clip.frames) for clip in batch])
        return [self.finish(emb[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
