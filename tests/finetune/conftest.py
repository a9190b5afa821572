"""Tiny models and a transcript corpus for the fine-tuning tests (no download)."""

import os

# DeepSpeed compiles its CPU comm op once; keep it with the venv (the Makefile sets the same).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", "..", ".venv", "torch_extensions"))

from finetune_helpers import text_manifest, tiny_llama  # noqa: E402,F401  (fixtures)
