"""``imported``: a feature table made elsewhere (``mer store import``), named in a job like any encoder.

``encoders.audio: {alias: imported, model: chinese-hubert-large@1a2b3c4d}`` reads
the table ``features__chinese-hubert-large__1a2b3c4d`` that ``mer store import``
wrote from a MERTools ``.npy`` folder (:mod:`mer.store.npy`). The reference
names the exact import (its version hashes the folder's content), so a job
trains on the same features wherever it runs. Nothing is extracted for such a
stream, and new clips cannot be encoded with it (``mer predict --run`` and
``mer serve`` say so); everything else (training, self-training, the linear
floor, robustness of the other streams) reads it like extracted features.
"""

from __future__ import annotations

import re

from mer.encoders.base import Encoder, EncoderConfigError

_REFERENCE = re.compile(r"^(?P<name>[A-Za-z0-9][\w.\-]*)@(?P<version>[0-9a-f]{8,16})$")


class ImportedFeatures(Encoder):
    """Features imported into the store; ``spec.model`` is ``<name>@<version8>`` as ``mer store import`` printed it."""

    alias = "imported"
    role = ""  # any role: the job says which
    extracts = False

    @classmethod
    def reference(cls, spec) -> tuple[str, str]:
        """``(name, version8)`` of ``spec.model``; EncoderConfigError when it is not such a reference."""
        match = _REFERENCE.match(spec.model or "")
        if not match or "__" in match["name"]:
            raise EncoderConfigError(f"alias imported: model {spec.model!r} must name an import as <name>@<version8> "
                                     "(mer store import prints it)")
        return match["name"], match["version"][:8]

    @classmethod
    def table_alias(cls, spec) -> str:
        return cls.reference(spec)[0]

    @classmethod
    def compute_version(cls, spec) -> str:
        return cls.reference(spec)[1]

    @classmethod
    def parse_corruption(cls, spec):
        if spec.corrupt:
            raise EncoderConfigError(f"alias imported: {spec.model} cannot be corrupted (its clips are not decoded here)")
        return None

    @property
    def dim(self) -> int:
        raise EncoderConfigError(f"{self.spec.model}: imported features have no encoder to run")
