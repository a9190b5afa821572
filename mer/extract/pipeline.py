"""One encoder over a set of manifest rows: Ray Data decode tasks -> encoder actor pool -> store.

Read top to bottom:

1. Resume: ids already in the target table (same encoder version) are dropped
   before anything is decoded; nothing left means no Ray work and no write.
2. Ray Data streams the remaining rows through ``decode_batch`` (CPU tasks,
   PyAV) and ``EncodeActor`` (an ``ActorPoolStrategy`` pool; ``num_gpus`` per
   actor when the cluster has GPUs, so Ray pins each actor to its own device).
3. The driver consumes blocks as they finish, hands them to a sink every
   ``write_batch`` rows (features: an idempotent upsert keyed on sample_id into
   the encoder version's table; a speech recogniser's transcripts: into its
   ``transcripts__`` table) and hands failed rows to ``on_failed`` (the stage
   quarantines them).

Resources: actors never hold every CPU. ``decode_cpus`` stay free for decode
tasks (else Ray Data waits forever for a CPU the actors hold); the actors split
the rest. Memory is bounded by Ray Data's streaming backpressure plus one
``write_batch`` buffer on the driver, whatever the corpus size.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import pickle
import time
import warnings
from collections import Counter
from typing import Callable

import numpy as np
import pandas as pd
import ray
from ray.util.annotations import RayDeprecationWarning
from tqdm import tqdm

from mer.config import AsrSpec, EncoderSpec, ExtractConfig
from mer.encoders import build_encoder, feature_ref
from mer.encoders.versions import asr_version
from mer.extract.workers import EncodeActor, decode_batch
from mer.store import open_store
from mer.store.schema import table_name
from mer.store.transcripts import transcripts_table

MANIFEST_COLUMNS = ["sample_id", "split", "label", "video", "audio", "text", "text_source"]


class FeatureSink:
    """Where an encoder's results go: its version's feature table (``vector``, ``seq``, a text row's ``text_source``)."""

    def __init__(self, store, alias: str, version: str, seq_dtype: str):
        self.store, self.alias, self.version, self.seq_dtype = store, alias, version, seq_dtype
        self.table = table_name(alias, version)

    def existing_ids(self) -> set[str]:
        return self.store.existing_ids(self.alias, self.version)

    def write(self, rows: list[dict]) -> int:
        """One idempotent upsert of buffered rows (a retried batch replaces, never duplicates)."""
        columns = {
            "sample_id": [r["sample_id"] for r in rows], "split": [r["split"] for r in rows],
            "label": [r["label"] for r in rows],
            "vector": np.stack([np.asarray(r["result"][0], np.float32) for r in rows]),
        }
        if all(r["result"][1] is not None for r in rows):
            columns["seq"] = [r["result"][1] for r in rows]
        if any(r["text_source"] for r in rows):
            columns["text_source"] = [r["text_source"] for r in rows]
        return self.store.upsert(self.alias, self.version, columns, seq_dtype=self.seq_dtype)


class TranscriptSink:
    """Where a speech recogniser's results go: its version's ``transcripts__`` table."""

    def __init__(self, store, engine: str, version: str):
        self.store, self.engine, self.version = store, engine, version
        self.table = transcripts_table(engine, version)

    def existing_ids(self) -> set[str]:
        return self.store.ids_in(self.table)

    def write(self, rows: list[dict]) -> int:
        frame = pd.DataFrame([{"sample_id": r["sample_id"], "split": r["split"], **dataclasses.asdict(r["result"])}
                              for r in rows])
        return self.store.write_transcripts(self.engine, self.version, frame)


@dataclasses.dataclass
class Plan:
    """Resources for one extraction run, from what the cluster has.

    Attributes:
        actors: encoder actors in the pool.
        actor_gpus: GPUs per actor (0 = CPU fallback).
        actor_cpus: CPUs per actor (the rest of the CPUs after ``decode_cpus``).
        decode_cpus: CPUs per decode task.
        threads: torch threads per actor on CPU (0 = leave Ray's default).
    """

    actors: int
    actor_gpus: float
    actor_cpus: float
    decode_cpus: float
    threads: int


def plan_resources(cfg: ExtractConfig, resources: dict | None = None) -> Plan:
    """Fit the actor pool to the cluster: GPUs when there are any, never every CPU.

    With GPUs each actor holds at most one CPU and decode tasks get the rest (a
    GPU node's cores feed its GPUs). On CPU the actors split what ``decode_cpus``
    leaves, and their torch threads share all cores (decode tasks are light
    beside a model and interleave), so one actor already uses the machine.
    """
    resources = ray.cluster_resources() if resources is None else resources
    cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    actors = max(1, cfg.num_actors)
    actor_gpus = cfg.gpus_per_actor if gpus > 0 and cfg.gpus_per_actor > 0 else 0.0
    if actor_gpus:
        actors = min(actors, max(1, int(gpus // actor_gpus)))  # a pool larger than the GPUs never starts
    decode = min(cfg.decode_cpus, cpus / 2)
    actor_cpus = round((cpus - decode) / actors, 3)
    if actor_gpus:  # the GPU does the work: leave every other core to decode tasks feeding it
        actor_cpus = min(1.0, actor_cpus)
    threads = 0 if actor_gpus else max(1, int(cpus // actors))
    return Plan(actors=actors, actor_gpus=actor_gpus, actor_cpus=actor_cpus, decode_cpus=decode, threads=threads)


def _answer() -> bool:
    return True


def live_resources(timeout_s: float = 30.0) -> dict:
    """Summed resources of the nodes whose raylet runs a task now.

    After a node is lost the GCS lists it as alive until its health checks time
    out (tens of seconds). A plan made from ``ray.cluster_resources()`` in that
    window counts the lost GPUs, and Ray Data then waits forever for an actor
    that cannot start. A zero-CPU task pinned to each listed node answers only
    where the node still runs; a node that does not answer within
    ``timeout_s`` is left out of the plan (at worst the pool is smaller).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_answer)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    total: Counter = Counter()
    for node, ref in zip(nodes, refs):
        if ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayError:  # the node died while it was asked
                continue
            total.update(node["Resources"])
    return dict(total)


def build_dataset(rows: pd.DataFrame, spec: EncoderSpec | AsrSpec, plan: Plan):
    """The lazy Ray Data pipeline: manifest rows -> decode tasks -> encoder actors.

    Encoder actors are not restarted by Ray (``max_restarts=0``): a restarted
    actor waits for the GPU it had, and when a node is lost that GPU never
    comes back, so Ray Data would wait on its batches forever. A dead actor
    fails the run instead, and ``extract_rows`` runs what had not come back in
    a new one, planned for the cluster that is left.
    """
    spec_json = json.dumps({"asr": dataclasses.asdict(spec)} if isinstance(spec, AsrSpec) else dataclasses.asdict(spec))
    per_block = max(1, spec.batch_size)
    # Missing values travel as "" so every block has string columns: a block whose
    # labels (or audio paths) are all None would get another Arrow type and Ray
    # Data could not concatenate blocks. decode_batch turns "" back into None.
    rows = rows.reindex(columns=MANIFEST_COLUMNS)
    records = rows.astype(object).where(rows.notna(), "")
    ds = ray.data.from_items(records.to_dict("records"), override_num_blocks=math.ceil(len(rows) / per_block))
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"spec_json": spec_json},
        batch_size=per_block,
        batch_format="numpy",
        num_cpus=plan.decode_cpus,
    )
    with warnings.catch_warnings():
        # Ray 2.60 flags max_restarts as a deprecated kwarg but has no named
        # parameter for it yet; Ray Data's own default (-1) restarts forever.
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return ds.map_batches(
            EncodeActor,
            fn_constructor_kwargs={"spec_json": spec_json, "threads": plan.threads},
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            batch_size=per_block,
            batch_format="numpy",
            num_cpus=plan.actor_cpus,
            num_gpus=plan.actor_gpus or None,
            max_restarts=0,
        )


def extract_rows(
    rows: pd.DataFrame,
    spec: EncoderSpec | AsrSpec,
    store_uri: str,
    cfg: ExtractConfig,
    on_failed: Callable[[list[dict]], None] = lambda failed: None,
    progress: bool = True,
    version: str | None = None,
) -> dict:
    """Extract one encoder's features (or one recogniser's transcripts) for ``rows`` into the store (resumable, idempotent).

    Ray retries lost decode tasks itself; a dead encoder actor (a crash, or a
    lost node) ends the Ray Data run, and the clips that had not come back are
    run again in a new one, planned for the cluster that is left, up to
    ``cfg.max_restarts`` times. What did come back is kept (upserts: nothing is
    stored twice).

    Args:
        rows: manifest rows (``sample_id, split, label, video, audio, text``; a text
            encoder's rows may carry ``text_source``, recorded per row).
        spec: the encoder spec, or an :class:`~mer.config.AsrSpec` (transcripts).
        store_uri: LanceDB URI.
        cfg: extraction settings (actors, GPUs, write batch, restarts).
        on_failed: called with ``[{sample_id, reason}]`` for samples that failed.
        progress: show a progress bar with samples/s and ETA.
        version: write into this encoder version's table instead of ``spec``'s own
            (cross-fitted fine-tuning: a fold model's features go into the
            cross-fitted table, :mod:`mer.finetune.crossfit`).

    Returns:
        ``{table, encoder, version, written, skipped, failed, no_face_frames,
        per_gpu, actors, seconds, samples_per_s, startup_s, steady_samples_per_s}``
        (``startup_s``: until the first batch came back; actor start and model load).
    """
    store = open_store(store_uri)
    if isinstance(spec, AsrSpec):
        version = asr_version(spec)
        sink, alias = TranscriptSink(store, spec.engine, version), f"asr-{spec.engine}"
    else:
        encoder = build_encoder(spec)
        ref = feature_ref(encoder.role or "", spec)
        alias, version = ref.alias, version or ref.version
        sink = FeatureSink(store, alias, version, spec.seq_dtype)
    done = sink.existing_ids()
    todo = rows[~rows["sample_id"].isin(done)]
    summary = {
        "table": sink.table,
        "encoder": alias,
        "version": version,
        "written": 0,
        "skipped": int(len(rows) - len(todo)),
        "failed": 0,
        "no_face_frames": 0,
    }
    if todo.empty:
        return summary
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one driver bar below instead of one per operator
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # plan and start-up INFO lines: the bar says it

    start = time.perf_counter()
    first: tuple[float, int] | None = None  # (seconds, rows) when the first batch arrived
    buffer: list[dict] = []
    per_gpu: Counter = Counter()
    returned: set[str] = set()  # ids that came back (stored or quarantined) in this run

    def flush() -> None:
        if buffer:
            summary["written"] += sink.write(buffer)
            buffer.clear()

    pending = todo
    with tqdm(total=len(todo), desc=f"extract {alias}", unit="clip", disable=not progress) as bar:
        for attempt in range(cfg.max_restarts + 1):
            if attempt:
                # Ray Data ends a failed run without ray.kill: its actors (and the GPUs
                # they hold) go when their handles are collected, and the failed run's
                # traceback holds them in a reference cycle.
                gc.collect()
            # After a failure, plan for the nodes that still answer: the cluster may have shrunk.
            plan = plan_resources(cfg, live_resources() if attempt else None)
            try:
                for batch in build_dataset(pending, spec, plan).iter_batches(
                        batch_size=None, batch_format="numpy"):
                    if first is None:
                        first = (time.perf_counter() - start, len(batch["sample_id"]))
                    returned.update(str(sid) for sid in batch["sample_id"])
                    _take(batch, buffer, per_gpu, summary, on_failed)
                    if len(buffer) >= cfg.write_batch:
                        flush()
                    bar.update(len(batch["sample_id"]))
                break
            except ray.exceptions.RayError as exc:
                # A dead actor or a lost node: keep what came back, run the rest again.
                flush()
                pending = pending[~pending["sample_id"].astype(str).isin(returned)]
                if attempt == cfg.max_restarts or pending.empty:
                    raise
                logging.getLogger(__name__).warning("extract %s: %s; running the %d remaining clips again",
                                                    alias, type(exc).__name__, len(pending))
        flush()
    seconds = time.perf_counter() - start
    startup, first_rows = first or (seconds, 0)
    summary.update(
        per_gpu=dict(per_gpu),
        actors=plan.actors,
        resources=f"{plan.actors} actor(s) x {plan.actor_gpus:g} GPU, {plan.actor_cpus:g} CPU"
                  + (f", {plan.threads} torch threads" if plan.threads else "") + f"; decode tasks {plan.decode_cpus:g} CPU",
        seconds=round(seconds, 2),
        samples_per_s=round(len(todo) / max(seconds, 1e-9), 2),
        # actor start and model load happen once per run; this is the rate after them
        startup_s=round(startup, 2),
        steady_samples_per_s=round((len(todo) - first_rows) / max(seconds - startup, 1e-9), 2),
    )
    return summary


def _take(batch: dict, buffer: list[dict], per_gpu: Counter, summary: dict, on_failed) -> None:
    """Sort one result batch: results into ``buffer``, failures to ``on_failed`` (counted in ``summary``)."""
    failed = []
    for i, sid in enumerate(batch["sample_id"]):
        summary["no_face_frames"] += int(batch["no_face"][i])
        if batch["error"][i]:
            failed.append({"sample_id": str(sid), "reason": str(batch["error"][i])})
            continue
        label, source = batch["label"][i], batch["text_source"][i]
        buffer.append({"sample_id": str(sid), "split": str(batch["split"][i]),
                       "label": label if isinstance(label, str) and label else None,
                       "text_source": source if isinstance(source, str) and source else None,
                       "result": pickle.loads(batch["result"][i])})
        per_gpu[str(batch["gpu"][i]) or "cpu"] += 1
    if failed:
        summary["failed"] += len(failed)
        on_failed(failed)
