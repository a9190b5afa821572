"""Checkpoint folders: safetensors weights plus a JSON config that rebuilds the model.

A folder holds ``config.json`` (model name, train settings, label set, roles
with encoder alias/version and the store table versions read, seed, history)
and one ``*.safetensors`` file per fold (one file without k-fold). Nothing is
unpickled: weights load with ``safetensors``, optimizer state with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mer.config import train_config
from mer.errors import MerError
from mer.models import build_model

CONFIG = "config.json"
#: Out-of-fold (or holdout) probabilities of the labeled train rows, written by ``fit``.
OOF_FILE = "oof_train.csv"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper."""
    return getattr(model, "module", model)


def save_weights(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    save_file(state, str(path))


def load_weights(model: nn.Module, path: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a weights file into ``model``; MerError naming the file when it is missing, damaged or of another model."""
    try:
        unwrap(model).load_state_dict(load_file(str(path), device=str(device)))
    except FileNotFoundError:
        raise MerError(f"{path}: missing (the checkpoint's weights)") from None
    except Exception as exc:  # safetensors' header errors, or a state dict of another shape
        raise MerError(f"{path}: cannot load the weights ({' '.join(str(exc).split())[:300]})") from None
    return model


def read_config(checkpoint_dir: str | Path) -> dict:
    """``config.json`` of a checkpoint folder; MerError if it is not one or the file is damaged."""
    path = Path(checkpoint_dir) / CONFIG
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MerError(f"{checkpoint_dir}: not a checkpoint folder (no {CONFIG})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MerError(f"{path}: damaged ({' '.join(str(exc).split())})") from None


def load_models(checkpoint_dir: str | Path) -> tuple[dict, list[nn.Module]]:
    """The config and one eval-mode model per weights file (fold) of a checkpoint."""
    config = read_config(checkpoint_dir)
    try:
        cfg, names = train_config(config["train"]), list(config["weights"])
        model_name, dims, classes = config["model"], config["dims"], len(config["labels"])
    except (KeyError, TypeError) as exc:
        raise MerError(f"{Path(checkpoint_dir) / CONFIG}: not a mer checkpoint config (no {exc})") from None
    models = [load_weights(build_model(model_name, dims, classes, cfg), Path(checkpoint_dir) / name).eval()
              for name in names]
    return config, models
