"""Job YAML -> typed dataclasses, with ``key=value`` overrides.

One job file runs on a laptop and on a cluster: it names the manifest, the store
URI, the run folder, the encoders per modality role and the stages with their
settings. Unknown keys and values of the wrong type are one-line errors that
name the key (``ConfigError``), raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mer.errors import MerError
from mer.stages import STAGES

MER2024_LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
ROLES = ("audio", "video", "text")
#: Where a text encoder's transcripts come from (``EncoderSpec.source``).
TEXT_SOURCES = ("manifest", "asr", "auto")


class ConfigError(MerError, ValueError):
    """A job file or override that cannot be used; the message names the key."""


@dataclass
class AsrSpec:
    """Speech recognition for clips without a transcript (the ``asr`` stage, ``mer predict``, ``mer serve``).

    Attributes:
        engine: ``whisper`` (any Hugging Face Whisper folder or hub name) or
            ``pocketsphinx`` (CMU PocketSphinx, its bundled US-English model; CPU).
        model: hub name or folder (whisper; default ``openai/whisper-large-v3``).
        language: a fixed language code (``zh``, ``en``...); empty = detect per clip (whisper).
        chunk_seconds: long clips are transcribed in windows of this length (Whisper's is 30 s).
        batch_size: windows per generate call.
        dtype: ``auto`` (bf16/fp16 on GPU, fp32 on CPU), ``float32``, ``float16``, ``bfloat16``.
        max_new_tokens: tokens generated per window.
        no_speech_threshold: a window whose no-speech probability is above this and whose
            average log-probability is below ``logprob_threshold`` is silence, music or
            speech the model cannot follow: its text is empty (Whisper's own rule).
        logprob_threshold: see ``no_speech_threshold``.
    """

    engine: str = "whisper"
    model: str | None = None
    language: str = ""
    chunk_seconds: float = 30.0
    batch_size: int = 8
    dtype: str = "auto"
    max_new_tokens: int = 128
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0


@dataclass
class EncoderSpec:
    """One encoder: a registry alias plus the settings it reads.

    Attributes:
        alias: registry name (``hf_audio``, ``hf_clip``, ``hf_text``, ``logmel``,
            ``frames``, ``minilm``).
        model: hub name or local folder for the ``hf_*`` encoders.
        layers: hidden-state layers averaged (negative = from the end).
        seq_len: time steps kept in the ``seq`` column (0 = no ``seq``).
        num_frames: frames sampled per video.
        face_crop: crop the largest face before video encoders.
        batch_size: samples per forward pass.
        dtype: ``auto`` (bf16/fp16 on GPU, fp32 on CPU), ``float32``, ``float16``, ``bfloat16``.
        trust_remote_code: allow hub code (Baichuan); off unless the job says so.
        max_seconds: audio longer than this is cut (chunks are encoded in turn).
        seq_dtype: ``float32`` or ``float16`` storage for ``seq``.
        corrupt: a corruption applied to every decoded clip before the model
            (``white@10``, ``babble@0``, ``blur@3``, ``mix@0:20``; see
            :mod:`mer.corpus.corrupt`); part of the version, so corrupted
            features get their own table. Empty = clean.
        noise_source: the noise recording ``babble`` mixes in (a WAV of other speech).
        name: the stream's name when a role has several encoders (default the
            alias): the second audio encoder ``egemaps`` is stream ``audio:egemaps``.
        source: where a text encoder's transcripts come from: ``manifest`` (the
            manifest's ``text``), ``asr`` (the ``asr`` stage's transcripts of the
            audio) or ``auto`` (the manifest's where it has one, else ASR). Part of
            the version for ``asr``/``auto``: features of two sources never mix
            under one version, and each row records which fed it.
        asr: the speech recogniser of ``source: asr|auto`` (and of ``mer predict``
            / ``mer serve`` on clips that come without text).
    """

    alias: str
    model: str | None = None
    layers: list[int] = field(default_factory=lambda: [-4, -3, -2, -1])
    seq_len: int = 16
    num_frames: int = 8
    face_crop: bool = True
    batch_size: int = 8
    dtype: str = "auto"
    trust_remote_code: bool = False
    max_seconds: float = 30.0
    seq_dtype: str = "float32"
    corrupt: str = ""
    noise_source: str = ""
    name: str = ""
    source: str = "manifest"
    asr: AsrSpec | None = None

    def __post_init__(self):
        if isinstance(self.asr, dict):  # a spec read back from JSON (checkpoints, actors)
            self.asr = AsrSpec(**self.asr)

    def recogniser(self) -> AsrSpec:
        """The speech recogniser of ``source: asr|auto`` (default: Whisper large-v3)."""
        return self.asr or AsrSpec()


def role_of(stream: str) -> str:
    """The role of a stream: ``audio`` for ``audio`` and ``audio:egemaps``."""
    return stream.split(":", 1)[0]


@dataclass
class ExtractConfig:
    """Sharded extraction settings (Ray Data actor pool per encoder).

    Attributes:
        num_actors: encoder actors per encoder (one GPU each when GPUs exist).
        gpus_per_actor: GPU fraction an actor holds when the cluster has GPUs.
        decode_cpus: CPUs reserved per decode task (kept free of actors so Ray
            Data never starves).
        write_batch: rows buffered before one upsert into the store.
        roles: roles to extract (default: every role in ``encoders``).
        max_restarts: times the clips that had not come back are run again in a
            new Ray Data run after an encoder actor died or a node was lost
            (upserts keep the table free of duplicates).
    """

    num_actors: int = 1
    gpus_per_actor: float = 1.0
    decode_cpus: float = 1.0
    write_batch: int = 256
    roles: list[str] = field(default_factory=list)
    max_restarts: int = 3


@dataclass
class TrainConfig:
    """Supervised training on cached embeddings (Ray Train).

    Attributes mirror the model and optimiser knobs; ``model`` is built by name
    (``agt``, ``attention``, ``concat``, ``unimodal``, ``linear``). ``linear_c`` is
    the inverse L2 strength of the ``linear`` model's logistic regressions.
    ``linear_skip`` adds a linear late-fusion shortcut to AGT's logits and
    ``audio_gate`` a learned audio-reliability gate (see :mod:`mer.models.agt`). ``baseline`` (default ``linear``, null = none) is fitted beside ``model`` by the
    train stage with the same seeds, so every evaluation shows the floor.
    ``select`` is which of the two the train stage publishes as the run's
    predictor: ``model`` (always ``model``) or ``cv`` (the one with the higher
    mean cross-validated WAF on the labeled train split, the score ``mer tune``
    ranks by; never the test split).
    """

    model: str = "agt"
    epochs: int = 30
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    hidden: int = 128
    heads: int = 4
    depth: int = 1
    dropout: float = 0.2
    amf_similarity: str = "cosine"
    use_seq: bool = True
    unimodal_role: str = "audio"
    linear_c: float = 0.1
    linear_skip: bool = False
    baseline: str | None = "linear"
    select: str = "model"
    class_weighted: bool = True
    # Regularisers for small labeled sets (all chosen by cross-validation, see docs/results.md):
    # whole modalities dropped per training sample (never all of a sample's), Gaussian
    # noise on the standardised features, and label smoothing of the loss.
    modality_dropout: float = 0.0
    feature_noise: float = 0.0
    label_smoothing: float = 0.0
    # Robustness to noisy audio (docs/results.md, "Robustness"): ``audio_augment`` names a corruption
    # (mer.corpus.corrupt, e.g. mix@0:20) the extract stage applies to copies of the non-test
    # audio, stored as their own encoder version; each training sample reads its noisy copy
    # with probability ``augment_p``. ``audio_gate`` gives AGT a learned audio-reliability gate.
    audio_augment: str = ""
    augment_p: float = 0.5
    audio_gate: bool = False
    scheduler: str = "cosine"
    patience: int = 8
    val_fraction: float = 0.15
    folds: int = 0


#: Keys that moved from ``train`` to ``execution`` (how a fit runs, not what it computes).
EXECUTION_KEYS = ("num_workers", "use_gpu", "max_failures", "memory_budget_gb", "checkpoint_every_s", "concurrent_fits",
                  "verbose")


@dataclass
class ExecutionConfig:
    """How training runs, never what it computes: none of these keys is part of a fit's identity.

    Attributes:
        num_workers: Ray Train workers per fit (DDP when > 1).
        use_gpu: one GPU per Ray Train worker.
        resources_per_worker: the Ray resources each Ray Train worker asks for
            (Ray's default when empty: 1 CPU, or 1 GPU with ``use_gpu``). A
            custom node resource (``ray start --resources '{"trainer": 1}'``)
            or ``accelerator_type:A100: 0.001`` keeps training on the nodes
            that have it; a fit no live node can hold is an error, not a wait.
        max_failures: times Ray Train restarts a fit from its last checkpoint.
        memory_budget_gb: features up to this size are read into numpy, larger
            ones are streamed per batch (identical batches either way).
        checkpoint_every_s: seconds between checkpoint reports (the last epoch
            always reports). A Ray Train report waits for the controller's 2 s
            poll, so reporting every sub-second epoch would triple a small
            model's fit time; a restart loses at most this much work.
        concurrent_fits: fits of one stage (seeds, self-training's models) run
            this many at a time.
        verbose: Ray Train workers print a line per epoch (``mer run -v``); the
            per-epoch history is in every checkpoint's ``config.json`` either way.
    """

    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    max_failures: int = 1
    memory_budget_gb: float = 4.0
    checkpoint_every_s: float = 10.0
    concurrent_fits: int = 2
    verbose: bool = False


@dataclass
class SelftrainConfig:
    """Self-training rounds: pseudo-labels from several models, then a vote.

    Attributes:
        rounds: maximum rounds.
        threshold: a model's label counts only where its max probability > threshold.
        voting: ``prior`` (paper), ``majority`` or ``soft``.
        prior_classes: classes for which the audio model's confident label wins.
        models: model names trained each round (``unimodal`` is the audio model).
        min_new: stop when a round adds fewer labels than this.
        prior_mode: ``override`` (the audio model's confident prior-class label
            wins even against a confident majority) or ``unless_majority`` (it
            wins unless a strict majority of the confident models says otherwise);
            the paper does not say which.
        audio_model: the model in ``models`` whose vote is trusted for the prior
            classes (``unimodal`` trains on ``train.unimodal_role``).
        test_threshold: threshold of the final vote on the test split; unset =
            ``threshold`` (the same vote as the pseudo-labels'). A sample with no
            confident vote takes the arg-max of the mean probability. 0 lets every
            model's top label vote, so the audio model's unsure worried/sad guesses
            override the others (measured on the demo: -3.4 WAF, docs/results.md).
        voters: ``all`` (the paper: every model votes alike) or ``cv``: each model
            votes with the weight of its cross-validated weighted F1 on the labeled
            train split (``cv`` in its checkpoint, mean over seeds), and a model more
            than ``cv_margin`` below the best does not vote, so a weak voter cannot
            pull the vote below the best model. Under ``prior`` voting a dropped
            audio model means the round falls back to ``majority``.
        cv_margin: how far below the best CV score a model may be and still vote.
    """

    rounds: int = 2
    threshold: float = 0.9
    voting: str = "prior"
    prior_classes: list[str] = field(default_factory=lambda: ["worried", "sad"])
    models: list[str] = field(default_factory=lambda: ["agt", "attention", "unimodal"])
    min_new: int = 10
    prior_mode: str = "override"
    audio_model: str = "unimodal"
    test_threshold: float | None = None
    voters: str = "all"
    cv_margin: float = 0.05


@dataclass
class FinetuneConfig:
    """DeepSpeed ZeRO fine-tuning of one extractor on the labeled split.

    Attributes:
        role: ``text`` (causal LM / encoder) or ``video`` (CLIP vision tower).
        deepspeed: DeepSpeed config dict, or a path to a JSON file.
        epochs, lr, batch_size: optimiser settings per worker.
        num_workers, use_gpu: Ray Train scaling.
        lora: train a LoRA adapter (peft) on the backbone instead of every weight
            (text role); the classification head stays fully trainable and the
            export merges the adapter into the base weights (``merge_and_unload``),
            so it loads with plain transformers.
        lora_r: rank of the LoRA update matrices (> 0).
        lora_alpha: LoRA scaling numerator (> 0); the update is scaled by ``lora_alpha / lora_r``.
        lora_dropout: dropout on the LoRA input, in [0, 1).
        lora_target_modules: module names (or name suffixes) that get an adapter,
            e.g. ``[q_proj, v_proj]`` for Llama, ``[W_pack]`` for Baichuan; ``null``
            = peft's default for the architecture (an error if peft has none).
        layer: hidden layer pooled for the classification head.
        out: folder for the exported Hugging Face model (default run_dir/finetuned_<role>).
        max_length: tokens kept per transcript (text role).
        gradient_checkpointing: recompute activations in backward (HF models).
        pseudo_labels: run_id whose accepted pseudo-labels join the labeled set.
        max_steps: stop after this many optimizer steps (0 = every epoch).
        seed: seed for the head init, shuffling and frame sampling.
        reextract: after export, point ``encoders.<role>.model`` at the export
            and re-extract that role into a new feature table.
        folds: cross-fitted fine-tuning (:mod:`mer.finetune.crossfit`): one model
            per fold of the labeled rows (stratified by label, seeded by ``seed``),
            each labeled row extracted by the model that did not train on it, so
            the downstream classifier never reads features fitted to its own
            training labels. 0 or 1 = one model on every labeled row, which then
            extracts every row.
        crossfit_other: which model extracts the rows outside the folds
            (unlabeled, test, clips served later): ``full`` = one more model,
            fine-tuned on every labeled row; ``average`` = the mean of the fold
            models' features (K fine-tunes instead of K + 1; the K models are
            loaded together to extract).
    """

    role: str = "text"
    deepspeed: Any = field(default_factory=lambda: {"zero_optimization": {"stage": 3}})
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 8
    num_workers: int = 2
    use_gpu: bool = False
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None
    layer: int = -1
    out: str | None = None
    max_length: int = 128
    gradient_checkpointing: bool = True
    pseudo_labels: str | None = None
    max_steps: int = 0
    seed: int = 0
    reextract: bool = True
    folds: int = 5
    crossfit_other: str = "full"

    def __post_init__(self):
        if self.folds < 0:
            raise ConfigError(f"finetune.folds: expected a fold count >= 2, or 0 or 1 for one model, got {self.folds}")
        if self.crossfit_other not in ("full", "average"):
            raise ConfigError(f"finetune.crossfit_other: expected full or average, got {self.crossfit_other!r}")


@dataclass
class AblationConfig:
    """The ``ablation`` stage (:mod:`mer.experiments.ablation`): which axes to run.

    Attributes:
        fusion_models: fusion models compared supervised-only.
        thresholds: pseudo-label thresholds swept.
        audio_encoders: alternative audio encoder specs (alias or dict) to compare.
        balanced_manifest: manifest of a balanced test set for the voting question.
        balanced_truth: hidden labels of that corpus's unlabeled split (pseudo-label
            accuracy of the balanced variants; ``truth`` belongs to the main corpus).
    """

    fusion_models: list[str] = field(default_factory=lambda: ["concat", "attention", "agt"])
    thresholds: list[float] = field(default_factory=lambda: [0.8, 0.9, 0.95])
    audio_encoders: list[Any] = field(default_factory=list)
    balanced_manifest: str | None = None
    balanced_truth: str | None = None


#: The robustness conditions run by default: every corruption kind of :mod:`mer.corpus.corrupt`.
DEFAULT_CONDITIONS = [
    "white@20", "white@10", "white@5", "white@0", "babble@20", "babble@10", "babble@5", "babble@0",
    "pink@10", "brown@10", "music@10", "hum@10", "reverb@0.8", "clip@0.1", "audio:drop",
    "blur@4", "dark@0.25", "occlude@0.4", "video:drop", "text:drop",
]


@dataclass
class RobustnessConfig:
    """The ``robustness`` stage (:mod:`mer.experiments.robustness`): models scored on corrupted test media.

    Attributes:
        conditions: ``[role:]kind@level`` per condition (role inferred from the
            kind: ``babble@10`` is audio, ``blur@4`` video); ``role:drop`` removes
            the role's features. See :mod:`mer.corpus.corrupt` for the kinds.
        models: supervised models trained on every role of the job.
        reference_roles: roles of the "without audio" reference models.
        reference_models: models trained on ``reference_roles`` only; the best of
            them is what a fusion model must beat when the audio is gone.
        final: also score the self-trained final vote (needs the selftrain stage first).
        babble_talkers: talkers summed into the babble recording (train-split clips).
    """

    conditions: list[str] = field(default_factory=lambda: list(DEFAULT_CONDITIONS))
    models: list[str] = field(default_factory=lambda: ["agt", "attention", "concat", "linear"])
    reference_roles: list[str] = field(default_factory=lambda: ["video", "text"])
    reference_models: list[str] = field(default_factory=lambda: ["attention", "concat", "linear"])
    final: bool = True
    babble_talkers: int = 6


#: Distributions a ``tune.space`` entry may name, with how many numbers each takes.
DISTRIBUTIONS = {"choice": None, "uniform": 2, "loguniform": 2, "randint": 2}


@dataclass
class TuneConfig:
    """``mer tune``: a search over recipe keys, each trial scored by K-fold CV on the labeled train split.

    Attributes:
        space: ``train.<key>`` -> one distribution: ``{choice: [a, b, ...]}``,
            ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}`` or
            ``{randint: [lo, hi]}`` (hi exclusive).
        num_samples: trials drawn.
        folds: K of each trial's stratified K-fold cross-validation.
        seeds: seeds each trial is scored with (the score is their mean).
        scheduler: ``random`` (every trial runs all folds) or ``asha`` (Ray
            Tune's ASHA stops trials whose running out-of-fold score trails
            after a fold; ``grace_folds`` folds are always run).
        grace_folds: folds a trial runs before ASHA may stop it.
        seed: seed of the search: the same seed draws the same trials.
        cpus_per_trial: CPUs a trial holds (its torch threads follow).
        max_concurrent: trials at once (0 = as many as the cluster's CPUs allow).
    """

    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    num_samples: int = 20
    folds: int = 5
    seeds: list[int] = field(default_factory=lambda: [0])
    scheduler: str = "random"
    grace_folds: int = 2
    seed: int = 0
    cpus_per_trial: float = 1.0
    max_concurrent: int = 0


@dataclass
class Job:
    """A whole job file.

    Attributes:
        name: job name (shown in ``mer list`` and the Ray dashboard).
        manifest: manifest path (relative to the working directory).
        store: LanceDB URI (folder or ``s3://...``); passed through untouched.
        run_dir: folder for everything the job writes besides the store.
        labels: label set, in the order of probability columns.
        encoders: modality role -> encoder spec, or a list of them (several
            feature sets of one modality, each its own stream: :meth:`streams`).
        stages: stages run in order.
        truth: optional CSV (sample_id,label) of hidden unlabeled labels, for
            reporting pseudo-label accuracy only; never used for training.
        store_options: lancedb storage options of an object-store ``store``
            (endpoint, credentials, timeouts); see :mod:`mer.store.options`.
    """

    name: str
    manifest: str
    store: str = "mer_store"
    run_dir: str = "runs/default"
    labels: list[str] = field(default_factory=lambda: list(MER2024_LABELS))
    encoders: dict[str, EncoderSpec | list[EncoderSpec]] = field(default_factory=dict)
    stages: list[str] = field(default_factory=lambda: ["validate", "extract", "train", "evaluate"])
    truth: str | None = None
    store_options: dict[str, str] = field(default_factory=dict)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    selftrain: SelftrainConfig = field(default_factory=SelftrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def to_yaml(self) -> str:
        """The resolved job as YAML (written to ``run_dir/config.yaml``)."""
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    def streams(self) -> dict[str, EncoderSpec]:
        """Stream -> encoder spec: a role's first encoder is the stream named after the role,
        the others ``<role>:<name or alias>`` (``audio``, ``audio:egemaps``)."""
        out = {}
        for role, specs in self.encoders.items():
            for i, spec in enumerate(specs if isinstance(specs, list) else [specs]):
                stream = role if i == 0 else f"{role}:{spec.name or spec.alias}"
                if stream in out:
                    raise ConfigError(f"encoders.{role}[{i}]: a second stream '{stream}'; give it its own name "
                                      f"(name: ...)")
                out[stream] = spec
        return out

    def encoder(self, role: str) -> EncoderSpec:
        """The role's first (or only) encoder: the one its ``has_<role>`` rows are decoded for first."""
        specs = self.encoders[role]
        return specs[0] if isinstance(specs, list) else specs


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # a list value is read as the list type first, so an error names the element at fault
        for arg in sorted(args, key=lambda a: typing.get_origin(a) is not list if isinstance(value, list) else 0):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and tp is EncoderSpec and isinstance(value, str):
            value = {"alias": value}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            if cls is Job and key == "report":
                raise ConfigError("'report' (the ablation axes) is now 'ablation'")
            if cls is AblationConfig and key == "snr_db":
                raise ConfigError("'ablation.snr_db' is now 'robustness.conditions' (e.g. [white@20, white@10, audio:drop])")
            if cls is TrainConfig and key in EXECUTION_KEYS:
                raise ConfigError(f"'{full}' moved to 'execution.{key}' (how a fit runs, not part of the recipe)")
            raise ConfigError(f"unknown key '{full}' (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], full)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" in '{prefix}'" if prefix else ""
        raise ConfigError(f"missing key '{missing[0]}'{where}")
    return cls(**kwargs)


def _set_path(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if isinstance(child, str):  # encoders.audio: logmel -> {alias: logmel}
            child = node[part] = {"alias": child}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a mapping")
        node = child
    node[parts[-1]] = value


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["train.epochs=5", "store=s3://b/m"]`` -> ``[("train.epochs", 5), ...]``.

    Values are parsed as YAML scalars/lists (``5``, ``0.9``, ``true``, ``[0,1]``).
    """
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{pair}' is not key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def job_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    """Build and check a job from a mapping plus ``key=value`` overrides."""
    data = dict(data)
    for key, value in parse_overrides(overrides):
        _set_path(data, key, value)
    job = _build(Job, data)
    unknown = [s for s in job.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown stage '{unknown[0]}' (known: {', '.join(STAGES)})")
    bad_roles = [r for r in job.encoders if r not in ROLES]
    if bad_roles:
        raise ConfigError(f"encoders: unknown role '{bad_roles[0]}' (known: {', '.join(ROLES)})")
    empty = [r for r, specs in job.encoders.items() if isinstance(specs, list) and not specs]
    if empty:
        raise ConfigError(f"encoders.{empty[0]}: an empty list; name at least one encoder")
    job.streams()  # distinct stream names
    if len(set(job.labels)) != len(job.labels) or not job.labels:
        raise ConfigError("labels: must be a non-empty list of distinct names")
    _check_lora(job.finetune)
    _check_tune(job.tune)
    return job


def _check_tune(cfg: TuneConfig) -> None:
    """Value checks of the ``tune`` section: recipe keys only, known distributions."""
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, dist in cfg.space.items():
        section, _, name = key.partition(".")
        if section != "train" or name not in train_keys:
            raise ConfigError(f"tune.space: '{key}' is not a train.<key> (known: train.{', train.'.join(sorted(train_keys))})")
        if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise ConfigError(f"tune.space.{key}: expected one of {{{', '.join(DISTRIBUTIONS)}}}: [...], got {dist!r}")
        kind, values = next(iter(dist.items()))
        arity = DISTRIBUTIONS[kind]
        if not isinstance(values, list) or not values or (arity and len(values) != arity):
            raise ConfigError(f"tune.space.{key}.{kind}: expected {arity or 'one or more'} values, got {values!r}")
    if cfg.scheduler not in ("random", "asha"):
        raise ConfigError(f"tune.scheduler: expected random or asha, got {cfg.scheduler!r}")
    if cfg.folds < 2:
        raise ConfigError(f"tune.folds: cross-validation needs at least 2 folds, got {cfg.folds}")


def train_config(values: dict) -> TrainConfig:
    """A :class:`TrainConfig` from a checkpoint's recorded ``train`` dict (older ones also hold execution keys)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names})


def with_values(job: Job, values: dict[str, Any]) -> Job:
    """A copy of ``job`` with dotted keys set (``{"train.lr": 0.003}``), type-checked like the YAML."""
    data = dataclasses.asdict(job)
    for key, value in values.items():
        _set_path(data, key, value)
    return job_from_dict(data)


def _check_lora(cfg: FinetuneConfig) -> None:
    """Value checks of the ``finetune.lora_*`` keys (their types are checked by ``_build``)."""
    if cfg.lora_r <= 0:
        raise ConfigError(f"finetune.lora_r: expected a positive rank, got {cfg.lora_r}")
    if cfg.lora_alpha <= 0:
        raise ConfigError(f"finetune.lora_alpha: expected a positive number, got {cfg.lora_alpha}")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise ConfigError(f"finetune.lora_dropout: expected a probability in [0, 1), got {cfg.lora_dropout}")
    targets = cfg.lora_target_modules
    if targets is not None and (not targets or not all(t.strip() for t in targets)):
        raise ConfigError(
            f"finetune.lora_target_modules: expected module names such as [q_proj, v_proj] "
            f"(or null for peft's default), got {targets!r}"
        )
    if cfg.lora and cfg.role != "text":
        raise ConfigError(f"finetune.lora: LoRA is supported for role text only, got role {cfg.role!r}")


def load_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    """Read a job YAML file; errors name the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such job file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file is a YAML mapping")
    try:
        return job_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def is_uri(value: str) -> bool:
    """True for ``s3://...``-style locations, which are never made absolute."""
    return "://" in value


def _local(value: str | None, base: Path) -> Path | None:
    """``base / value`` for a relative path that exists there; None for URIs, hub names and absolute paths."""
    if value and not is_uri(value) and not Path(value).is_absolute() and (base / value).exists():
        return (base / value).resolve()
    return None


def absolute_paths(job: Job, base: Path) -> dict[str, Any]:
    """``{key: "/abs/path"}`` for the job's relative local paths (apply with :func:`with_values`).

    Outputs (store, run_dir, finetune.out) always become absolute; inputs
    (manifest, truth, ablation.balanced_manifest / balanced_truth, encoder model folders) only
    when they exist under ``base`` (an encoder's ``model`` is otherwise a hub
    name such as ``facebook/hubert-large-ll60k``). A role with a list of
    encoders gets the whole list back, each model folder made absolute.
    """
    lists = {}
    for role, specs in job.encoders.items():
        if isinstance(specs, list) and any(_local(s.model, base) for s in specs):
            lists[f"encoders.{role}"] = [dataclasses.asdict(dataclasses.replace(s, model=str(_local(s.model, base) or s.model)))
                                         for s in specs]
    outputs = {"store": job.store, "run_dir": job.run_dir, "finetune.out": job.finetune.out}
    inputs = {
        "manifest": job.manifest,
        "truth": job.truth,
        "ablation.balanced_manifest": job.ablation.balanced_manifest,
        "ablation.balanced_truth": job.ablation.balanced_truth,
        **{f"encoders.{role}.model": spec.model for role, spec in job.encoders.items() if not isinstance(spec, list)},
    }
    pairs = []
    for key, value in outputs.items():
        if value and not is_uri(value) and not Path(value).is_absolute():
            pairs.append((key, base / value))
    pairs += [(key, _local(value, base)) for key, value in inputs.items() if _local(value, base)]
    return {**{key: str(path.resolve()) for key, path in pairs}, **lists}
