"""What a feature or transcript version hashes: weights fingerprints, file digests, recogniser versions.

Below every encoder and recogniser (no model code here), so :mod:`mer.encoders.base`
can put a recogniser's version into a text encoder's without importing the recogniser.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from mer.config import AsrSpec

_SAMPLE_BYTES = 64 * 1024
_SAMPLES_PER_FILE = 8
DEFAULT_WHISPER = "openai/whisper-large-v3"


def weights_fingerprint(model: str) -> str:
    """Cheap identity of a model folder or hub name, without loading it.

    A local folder hashes each file's relative name, size and ``_SAMPLES_PER_FILE``
    blocks of ``_SAMPLE_BYTES`` read at evenly spaced offsets: names and sizes alone
    miss a fine-tuned checkpoint of the same architecture (identical sizes), while
    sampled blocks catch it for about 0.5 MB read per file (not the 26 GB of
    Baichuan-13B). A hub name uses the cached snapshot's commit when there is one.
    """
    path = Path(model).expanduser()
    if not path.is_dir():
        return f"hub:{model}@{_hub_revision(model)}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}:{size}".encode())
        with open(file, "rb") as fh:
            for k in range(_SAMPLES_PER_FILE):
                fh.seek(max(0, size - _SAMPLE_BYTES) * k // max(1, _SAMPLES_PER_FILE - 1))
                digest.update(fh.read(_SAMPLE_BYTES))
    return "dir:" + digest.hexdigest()[:16]


def file_digest(path: str) -> str:
    """sha256 of a whole (small) file, e.g. a noise recording, 16 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _hub_revision(name: str) -> str:
    """Commit of the locally cached snapshot of a hub repo, or ``"main"`` if none."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True)).name
    except Exception:  # not cached / offline: the name is all we know
        return "main"


def source_label(spec: AsrSpec, version: str | None = None) -> str:
    """``asr:<engine>:<model>@<version8>``: which recogniser made a transcript (feature rows, predictions).

    ``version``: the spec's :func:`asr_version` when the caller has it (it re-reads the weights' samples).
    """
    model = spec.model or (DEFAULT_WHISPER if spec.engine == "whisper" else "en-us")
    return f"asr:{spec.engine}:{model}@{(version or asr_version(spec))[:8]}"


def asr_version(spec: AsrSpec) -> str:
    """Hash of what a transcript depends on: engine, weights, language and decoding settings (not the batch size)."""
    if spec.engine == "pocketsphinx":
        from importlib.metadata import version

        weights = f"pocketsphinx=={version('pocketsphinx')}:en-us"
    else:
        weights = weights_fingerprint(spec.model or DEFAULT_WHISPER)
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("batch_size", "model")}
    blob = json.dumps({"asr": 1, "weights": weights, **fields}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
