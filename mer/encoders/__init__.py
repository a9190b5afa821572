"""Encoders by alias: ``hf_audio``, ``hf_clip``, ``hf_text`` (Hugging Face models, hub name
or local folder), the light CPU ones ``logmel``, ``frames``, ``minilm`` and
``egemaps``, and ``imported`` (a feature table ``mer store import`` wrote).

A job picks encoders purely by config (``encoders: {audio: {alias: hf_audio, model: ...}}``).
An alias of the form ``package.module:ClassName`` loads an ``Encoder`` subclass
from an importable module, so a project can plug in its own encoder without
editing this registry. No Ray here.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from mer.config import EncoderSpec
from mer.encoders.base import Encoder, segment_means, weights_fingerprint
from mer.encoders.egemaps import EGeMAPSEncoder
from mer.encoders.fold_average import FoldAverage, averaged_folds
from mer.encoders.frames import FramesEncoder
from mer.encoders.hf_audio import HFAudioEncoder
from mer.encoders.hf_clip import HFClipEncoder
from mer.encoders.hf_text import HFTextEncoder
from mer.encoders.imported import ImportedFeatures
from mer.encoders.logmel import LogMelEncoder
from mer.encoders.minilm import MiniLMEncoder
from mer.errors import MerError

KNOWN_ENCODERS: dict[str, type[Encoder]] = {
    cls.alias: cls
    for cls in (HFAudioEncoder, HFClipEncoder, HFTextEncoder, LogMelEncoder, FramesEncoder, MiniLMEncoder,
                ImportedFeatures, EGeMAPSEncoder)
}


class UnknownEncoderError(MerError, KeyError):
    """An alias that names no encoder."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def encoder_class(alias: str) -> type[Encoder]:
    """The class behind ``alias`` (a registry name or ``module:Class``)."""
    if alias in KNOWN_ENCODERS:
        return KNOWN_ENCODERS[alias]
    module, sep, name = alias.partition(":")
    if sep:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise UnknownEncoderError(f"encoder '{alias}': cannot import ({exc})") from None
        if isinstance(cls, type) and issubclass(cls, Encoder):
            return cls
        raise UnknownEncoderError(f"encoder '{alias}' is not an Encoder subclass")
    known = ", ".join(sorted(KNOWN_ENCODERS))
    raise UnknownEncoderError(f"unknown encoder '{alias}' (known: {known}; or module:Class)")


def check_streams(streams: dict[str, EncoderSpec]) -> None:
    """Every stream's encoder exists and encodes the stream's role; a corruption parses (no weights load).

    Raises:
        MerError: naming ``encoders.<role>`` and what is wrong.
    """
    from mer.config import TEXT_SOURCES, ConfigError, role_of
    from mer.encoders.asr import check_asr

    for stream, spec in streams.items():
        role = role_of(stream)
        try:
            cls = encoder_class(spec.alias)
        except UnknownEncoderError as exc:
            raise UnknownEncoderError(f"encoders.{role}: {exc}") from None
        if cls.role and cls.role != role:
            raise ConfigError(f"encoders.{role}: '{spec.alias}' is a {cls.role} encoder")
        try:
            feature_ref(stream, spec)  # the version: an imported reference that names nothing fails here
        except MerError as exc:
            raise ConfigError(f"encoders.{role}: {exc}") from None
        cls.parse_corruption(spec)
        if spec.source not in TEXT_SOURCES:
            raise ConfigError(f"encoders.{role}.source: {spec.source!r} is not one of {', '.join(TEXT_SOURCES)}")
        if spec.source != "manifest" and role != "text":
            raise ConfigError(f"encoders.{role}.source: only the text role reads transcripts")
        if spec.asr is not None or spec.source != "manifest":
            try:
                check_asr(spec.recogniser())
            except MerError as exc:
                raise ConfigError(f"encoders.{role}.{exc}") from None


def build_encoder(spec: EncoderSpec, device: str = "cpu") -> Encoder:
    """An encoder for ``spec``; weights load on its first ``encode`` call.

    A cross-fitted export that averages its fold models gives a
    :class:`~mer.encoders.fold_average.FoldAverage` of them.
    """
    cls = encoder_class(spec.alias)
    folds = averaged_folds(cls.resolve_model(spec))
    if folds:
        return FoldAverage([cls(dataclasses.replace(spec, model=f), device) for f in folds], cls.compute_version(spec))
    return cls(spec, device)


def encoder_version(spec: EncoderSpec) -> str:
    """Hash of the spec's output-relevant fields and the weights fingerprint (no model load)."""
    return encoder_class(spec.alias).compute_version(spec)


@dataclass(frozen=True)
class FeatureRef:
    """Where one role's features live, resolved once from the job's encoder spec.

    ``alias`` is the encoder *class's* alias: a plug-in ``mypkg.module:MyEncoder``
    whose class says ``alias = "mine"`` is stored as ``features__mine__...``,
    and every stage that reads or writes it goes through this reference.
    """

    role: str
    alias: str
    version: str

    @property
    def table(self) -> str:
        """``features__<alias>__<version8>``."""
        from mer.store.schema import table_name

        return table_name(self.alias, self.version)


def feature_ref(role: str, spec: EncoderSpec) -> FeatureRef:
    """The :class:`FeatureRef` of ``spec`` for ``role`` (no model load)."""
    cls = encoder_class(spec.alias)
    return FeatureRef(role, cls.table_alias(spec), cls.compute_version(spec))


def augment_spec(spec: EncoderSpec, corruption: str) -> EncoderSpec:
    """The audio spec of ``train.audio_augment``'s noisy training copies (the extract stage writes them)."""
    return dataclasses.replace(spec, corrupt=corruption, noise_source="")


def feature_refs(streams: dict[str, EncoderSpec]) -> dict[str, FeatureRef]:
    """Stream -> :class:`FeatureRef` for a job's streams (``Job.streams``)."""
    return {stream: feature_ref(stream, spec) for stream, spec in streams.items()}


__all__ = [
    "KNOWN_ENCODERS",
    "augment_spec",
    "Encoder",
    "FeatureRef",
    "UnknownEncoderError",
    "build_encoder",
    "check_streams",
    "encoder_class",
    "encoder_version",
    "feature_ref",
    "feature_refs",
    "segment_means",
    "weights_fingerprint",
]
