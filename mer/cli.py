"""The ``mer`` command line: thin click commands over the package's functions.

Each command parses its arguments, calls one function, prints the result and
what to do next. Heavy imports (torch, ray, lancedb) happen inside commands so
``mer --help`` stays instant. Every failure, ours or a library's, becomes one
line ``error: <what>`` with exit code 2; ``-v`` (anywhere on the command line)
adds the traceback.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from pathlib import Path

import click

from mer.errors import MerError

_OUT_HELP = "CSV to write; - writes to stdout."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mer")
@click.option("-v", "--verbose", is_flag=True, help="On an error, show the traceback too.")
def cli(verbose) -> None:
    """mer: semi-supervised multimodal emotion recognition.

    A distributed feature store (Ray + LanceDB) plus trainer for the
    Audio-Guided Transformer (arXiv 2409.05007).

    \b
    Quick start:
      mer demo-data demo_corpus
      mer run jobs/quickstart.yaml
    \b
    From a downloaded MER2025 release to the challenge submission:
      mer corpus import mer2025 /data/mer2025-dataset --out mer2025/manifest.csv
      mer run jobs/mer2025.yaml
      mer export submission --run runs/mer2025 --out submission.csv
    """


def _writable_file(out: str, option: str = "--out") -> None:
    """MerError before any work when ``out`` cannot be the file written (a folder, or a file in a missing parent that cannot be made)."""
    path = Path(out)
    if out != "-" and path.is_dir():
        raise MerError(f"{option} {out}: is a folder; name the file to write (e.g. {path / 'predictions.csv'})")


_COUNT = click.IntRange(min=0)


@cli.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n-train", default=240, show_default=True, type=_COUNT, help="Labeled training clips.")
@click.option("--n-unlabeled", default=240, show_default=True, type=_COUNT, help="Unlabeled clips (test label distribution).")
@click.option("--n-test", default=120, show_default=True, type=_COUNT,
              help="Labeled test clips (with --layout: the candidates, whose labels go to track1_test_dis.csv).")
@click.option("--seed", default=0, show_default=True, help="Same seed, same corpus.")
@click.option("--balanced-test", is_flag=True, help="Test split with every label equally common (no label shift).")
@click.option("--style", type=click.Choice(["demo", "heldout"]), default="demo", show_default=True,
              help="heldout: unseen speakers, noisy reverberant rooms, situation transcripts (a corpus nothing was tuned on).")
@click.option("--layout", type=click.Choice(["manifest", "mer2025", "mer2024"]), default="manifest", show_default=True,
              help="mer2025/mer2024: the organisers' release layout (for mer corpus import) instead of a manifest.")
@click.option("--speech", is_flag=True,
              help="Each clip's audio is its transcript spoken by espeak-ng (for measuring speech recognition).")
def demo_data(out, n_train, n_unlabeled, n_test, seed, balanced_test, style, layout, speech) -> None:
    """Write a synthetic corpus of real mp4 clips (face + voice) and a manifest.

    \b
    Example:
      mer demo-data demo_corpus --n-train 300 --seed 1
      mer demo-data heldout_corpus --style heldout --seed 101
      mer demo-data mer2025_demo --layout mer2025
      mer demo-data speech_corpus --speech
    """
    if n_train + n_unlabeled + n_test == 0:
        raise MerError("demo-data: --n-train, --n-unlabeled and --n-test are all 0: nothing to write")
    if layout != "manifest":
        from mer.corpus.demo_release import make_release_corpus

        if style != "demo" or balanced_test or speech:
            raise MerError(f"--layout {layout}: takes the demo style only (no --style heldout, --balanced-test or --speech)")
        root = make_release_corpus(out, layout, n_train=n_train, n_unlabeled=n_unlabeled, n_test=n_test, seed=seed)
        click.echo(f"wrote a {layout} release layout to {root}")
        click.echo(f"next: mer corpus import {layout} {root} --out {root}/manifest.csv")
        return
    from mer.corpus.demo import make_demo_corpus

    manifest = make_demo_corpus(
        out, n_train=n_train, n_unlabeled=n_unlabeled, n_test=n_test, seed=seed, balanced_test=balanced_test,
        style=style,
    )
    if speech:
        from mer.corpus.speech import speak_manifest

        click.echo(f"spoke {speak_manifest(manifest)} transcripts (espeak-ng) into {manifest.parent / 'speech'}")
    click.echo(f"wrote {manifest}")
    click.echo(f"next: mer corpus validate {manifest}   or   mer run jobs/quickstart.yaml")


@cli.group()
def corpus() -> None:
    """Inspect and validate manifests."""


@corpus.command("validate")
@click.argument("manifest", type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for quarantine.csv (default: beside the manifest).")
@click.option("--labels", default=None, help="Comma-separated label set (default: the six MER2024 labels).")
@click.option("--no-media", is_flag=True, help="Skip decoding media (only check that files exist).")
def corpus_validate(manifest, out, labels, no_media) -> None:
    """Check a manifest; quarantine bad rows with their reason.

    Exit code 0 when usable rows remain, 2 when the file is not a manifest.

    \b
    Example:
      mer corpus validate demo_corpus/manifest.csv
    """
    from mer.config import MER2024_LABELS

    _report_validation(manifest, _labels(labels) or MER2024_LABELS, out, no_media)
    click.echo("next: mer run jobs/quickstart.yaml manifest=" + str(manifest))


def _labels(text: str | None) -> list[str] | None:
    """``"angry, sad"`` -> ``["angry", "sad"]``; MerError on an empty or repeated label."""
    if text is None:
        return None
    labels = [label.strip() for label in text.split(",")]
    if not all(labels) or len(set(labels)) != len(labels):
        raise MerError(f"--labels {text!r}: give distinct comma-separated names, e.g. neutral,angry,happy")
    return labels


def _report_validation(manifest, labels: list[str], out, no_media: bool) -> None:
    """Validate a manifest, write its quarantine file and print the summary table."""
    from mer.corpus.validate import validate_manifest

    result = validate_manifest(manifest, labels, check_media=not no_media, keep_clean=False)
    out_dir = Path(out) if out else Path(manifest).parent
    quarantine = result.write_quarantine(out_dir)
    click.echo(result.summary_table())
    click.echo(f"{result.usable} usable rows, {len(result.quarantine)} quarantined -> {quarantine}"
               + (f"; {len(result.candidates)} candidates" if len(result.candidates) else ""))
    if not result.usable:
        raise MerError(f"{manifest}: no usable rows (see {quarantine})")


@corpus.command("import")
@click.argument("layout", type=click.Choice(["mer2025", "mer2024"]))
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--out", default=None, help="Manifest to write (default: ROOT/manifest.csv).")
@click.option("--language", type=click.Choice(["chinese", "english"]), default="chinese", show_default=True,
              help="Transcript column used as the text.")
@click.option("--candidates", type=click.Path(dir_okay=False), default=None,
              help="CSV with a name column: the clips to predict (default: the release's own list).")
@click.option("--no-media", is_flag=True, help="Validate without decoding media (only check that files exist).")
@click.option("--no-validate", is_flag=True, help="Write the manifest only.")
def corpus_import(layout, root, out, language, candidates, no_media, no_validate) -> None:
    """Turn a downloaded MER2025 / MER2024 release into a manifest, then validate it.

    Labeled clips become split train, every other clip split unlabeled; the
    clips to predict are marked candidate=1 (they stay unlabeled, so
    self-training may pseudo-label them). The release's 16 kHz wav is used
    where it ships one.

    \b
    Example:
      mer corpus import mer2025 /data/mer2025-dataset --out mer2025/manifest.csv
      mer corpus import mer2024 /data/mer2024 --language english --candidates test_names.csv
    """
    from mer.config import MER2024_LABELS
    from mer.corpus.release import import_release

    out = out or str(Path(root) / "manifest.csv")
    _writable_file(out)
    summary = import_release(layout, root, out, language=language, candidates=candidates)
    splits = ", ".join(f"{k} {v}" for k, v in sorted(summary.splits.items()))
    click.echo(f"wrote {summary.manifest}: {summary.rows} clips ({splits}), {summary.candidates} candidates, "
               f"{summary.no_video} without a video file, {summary.no_text} without a transcript, in {summary.seconds} s")
    if not no_validate:
        _report_validation(str(summary.manifest), MER2024_LABELS, None, no_media)
    click.echo(f"next: mer run jobs/{layout}.yaml manifest={summary.manifest}")


@cli.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("job_file", type=click.Path())
@click.argument("overrides", nargs=-1)
@click.option("-v", "--verbose", is_flag=True, help="Ray Train workers print a line per epoch.")
def run(job_file, overrides, verbose) -> None:
    """Run a job's stages on embedded Ray (or the cluster this runs inside).

    \b
    Example:
      mer run jobs/quickstart.yaml train.epochs=5 store=/data/mer_store
    """
    from mer.config import load_job
    from mer.runner import run_job

    job = load_job(job_file, [*overrides, *(["execution.verbose=true"] if verbose else [])])
    run_job(job, echo=click.echo)
    click.echo(f"results in {job.run_dir}/ ; store at {job.store}")
    click.echo(f"next: mer query tables --store {job.store}")


@cli.command("tune", context_settings={"ignore_unknown_options": True})
@click.argument("job_file", type=click.Path())
@click.argument("overrides", nargs=-1)
def tune(job_file, overrides) -> None:
    """Choose a training recipe by K-fold CV on the labeled train split (Ray Tune).

    The job's ``tune:`` section names the search (space, num_samples, folds,
    seeds, scheduler random|asha). Rerunning a killed search resumes it.

    \b
    Example:
      mer tune jobs/tune.yaml tune.num_samples=30 tune.scheduler=asha
    """
    from mer.config import load_job
    from mer.runner import run_tune

    job = load_job(job_file, overrides)
    summary = run_tune(job, echo=click.echo)
    best = ", ".join(f"{k}={v}" for k, v in summary["best"].items())
    click.echo(f"best of {summary['trials']} trials: CV weighted F1 {summary['best_cv_weighted_f1']:.4f} ({best})")
    click.echo(f"results in {job.run_dir}/tune_results.csv, tune.png; search state in {summary['experiment']}")
    click.echo(f"next: mer run {job.run_dir}/best.yaml")


_store_option = click.option(
    "--store", envvar="MER_STORE", default="mer_store", show_default=True,
    help="Store URI: a folder or any lancedb URI such as s3://bucket/mer (env MER_STORE).",
)
_encoder_help = "Encoder alias (newest version), alias@version8, or a full table name."


@cli.group()
def query() -> None:
    """Inspect the feature store: tables, samples, neighbours, index, export."""


@query.command("tables")
@_store_option
def query_tables(store) -> None:
    """List every table: encoder, version, dim, rows per split and label, Lance versions.

    \b
    Example:
      mer query tables --store mer_store
    """
    from mer.store import open_store
    from mer.store.query import tables_text

    click.echo(tables_text(open_store(store, create=False)))
    click.echo(f"next: mer query get SAMPLE_ID --store {store}   or   mer query like SAMPLE_ID --encoder ALIAS")


@query.command("get")
@click.argument("sample_id")
@click.option("--encoder", default=None, help=_encoder_help + " Default: every feature table.")
@_store_option
def query_get(sample_id, encoder, store) -> None:
    """Show one sample's stored vectors (shape, head values) and metadata, and its transcripts.

    \b
    Example:
      mer query get s0001 --encoder minilm
    """
    from mer.store import open_store
    from mer.store.query import encoder_ref, get_sample

    found = get_sample(open_store(store, create=False), sample_id, encoder)
    for row in found:
        click.echo(f"{row['table']}:")
        for key, value in row.items():
            if key != "table":
                click.echo(f"  {key}: {value}")
    click.echo(f"next: mer query like {sample_id} --encoder {encoder_ref(found[0]['table'])} --store {store}")


@query.command("like")
@click.argument("sample_id")
@click.option("--encoder", required=True, help=_encoder_help)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Neighbours to return.")
@click.option("--where", default=None, help="SQL filter on the table, e.g. \"split = 'train'\".")
@_store_option
def query_like(sample_id, encoder, k, where, store) -> None:
    """Nearest neighbours of a sample (cosine distance), with their labels.

    \b
    Example:
      mer query like s0001 --encoder minilm -k 10 --where "split = 'train'"
    """
    from mer.store import open_store
    from mer.store.query import like

    frame, mode = like(open_store(store, create=False), sample_id, encoder, k, where)
    click.echo(frame.to_string(index=False, na_rep="-"))
    click.echo(f"({mode} search, {len(frame)} rows)")
    hint = f"mer query index --encoder {encoder} --store {store}" if mode == "exact" else f"mer query get {sample_id}"
    click.echo(f"next: {hint}")


@query.command("index")
@click.option("--encoder", required=True, help=_encoder_help)
@click.option("--force", is_flag=True, help="Build even on a small table.")
@_store_option
def query_index(encoder, force, store) -> None:
    """Build the ANN index (IVF_SQ, cosine) that `mer query like` then uses.

    \b
    Example:
      mer query index --encoder hf_audio
    """
    from mer.store import open_store
    from mer.store.query import index

    summary = index(open_store(store, create=False), encoder, force=force)
    if summary["built"]:
        click.echo(f"indexed {summary['table']}: {summary['rows']} rows, {summary['params']}, {summary['seconds']} s")
    else:
        click.echo(f"not indexed {summary['table']}: {summary['reason']} (--force builds anyway)")
    click.echo(f"next: mer query like SAMPLE_ID --encoder {encoder} --store {store}")


@query.command("export")
@click.argument("out", type=click.Path())
@click.option("--encoder", required=True, help=_encoder_help)
@click.option("--split", default=None, help="Only this split.")
@click.option("--with-seq", is_flag=True, help="Parquet: also export the seq column.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "npy"]), default="parquet", show_default=True,
              help="npy: MERTools' layout, one OUT/<sample_id>.npy per row.")
@click.option("--frames", is_flag=True, help="npy: write each row's seq as (T, D) frames instead of its (D,) vector.")
@_store_option
def query_export(out, encoder, split, with_seq, fmt, frames, store) -> None:
    """Write one encoder's table to Parquet (pandas, duckdb, polars) or to MERTools' .npy layout.

    --encoder transcripts exports the speech recogniser's transcripts (Parquet).

    \b
    Example:
      mer query export --encoder minilm features.parquet
      mer query export --encoder transcripts transcripts.parquet
      mer query export --encoder hf_audio --format npy mertools/chinese-hubert-large-UTT
    """
    from mer.store import open_store

    db = open_store(store, create=False)
    if fmt == "npy":
        from mer.store.npy import export_folder

        click.echo(f"wrote {export_folder(db, encoder, out, frames=frames, split=split)} .npy files to {out}")
        click.echo(f"next: mer store import {out} --name <name> --role <role> --manifest <manifest.csv>")
        return
    from mer.store.query import export

    _writable_file(out)
    rows = export(db, encoder, out, with_seq=with_seq, split=split)
    click.echo(f"wrote {rows} rows to {out}")
    click.echo(f"next: duckdb -c \"SELECT split, label, count(*) FROM '{out}' GROUP BY ALL\"")


@cli.group("store")
def store_group() -> None:
    """Bring features made elsewhere into the store."""


@store_group.command("import")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--name", required=True, help="The feature set's name, e.g. chinese-hubert-large (the table's alias).")
@click.option("--role", required=True, type=click.Choice(["audio", "video", "text"]), help="The modality they describe.")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False),
              help="The corpus' manifest: the split and label of every sample.")
@click.option("--seq-len", default=16, show_default=True, type=click.IntRange(min=0),
              help="Frame-level (T, D) files keep this many segment means as seq (0 = none).")
@_store_option
def store_import(folder, name, role, manifest, seq_len, store) -> None:
    """Import a MERTools feature folder (one <name>.npy per clip: (D,) or (T, D)) as a table.

    The table's version hashes the folder's content: a rerun adds nothing, a
    changed file makes a new version. A file missing from the manifest, not a
    numpy array or of another width is reported and skipped.

    \b
    Example:
      mer store import features/chinese-hubert-large-UTT --name chinese-hubert-large --role audio \\
          --manifest mer2025/manifest.csv
    """
    from mer.corpus.manifest import read_manifest
    from mer.store import open_store
    from mer.store.npy import import_folder

    rows = read_manifest(manifest).drop_duplicates("sample_id")
    summary = import_folder(open_store(store), name, folder, rows, seq_len=seq_len)
    click.echo(f"{summary.table}: {summary.files} files, {summary.written} rows written, {summary.skipped} already "
               f"stored, {len(summary.problems)} refused (dim {summary.dim or '-'})")
    for problem in summary.problems[:10]:
        click.echo(f"refused {problem}", err=True)
    if len(summary.problems) > 10:
        click.echo(f"refused {len(summary.problems) - 10} more", err=True)
    click.echo(f"next: name it in a job: encoders.{role}: {{alias: imported, model: {summary.reference}}}")


_ASR_HELP = ("Transcribe clips that come without text with this recogniser when the run has none of its own: "
             "whisper[:HUB_NAME_OR_FOLDER] (default model openai/whisper-large-v3) or pocketsphinx.")


def _asr_spec(value: str | None):
    """``--asr ENGINE[:MODEL]`` as an AsrSpec (None when not given)."""
    if not value:
        return None
    from mer.config import AsrSpec
    from mer.encoders.asr import check_asr

    engine, _, model = value.partition(":")
    spec = AsrSpec(engine=engine, model=model or None)
    check_asr(spec)
    return spec


@cli.command("predict")
@click.argument("clips", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Trained run: predict CLIPS with its final predictor (self-training vote, else the seed ensemble).")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(file_okay=False),
              help="Checkpoint folder (config.json + safetensors); repeat to average several. "
                   "With CLIPS it replaces the run's.")
@click.option("--split", type=click.Choice(["test", "unlabeled", "train"]), default=None,
              help="Stored split to predict with --checkpoint.  [default: test]")
@click.option("--text", "texts", multiple=True, help="Transcript of a clip: one per clip, in the order of CLIPS.")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None, help="Manifest of new clips to predict.")
@click.option("--asr", default=None, metavar="ENGINE[:MODEL]", help=_ASR_HELP)
@click.option("--store", default=None,
              help="--split: store to read (default: the checkpoint's). Clips: also write their features there.")
@click.option("--out", default="predictions.csv", show_default=True, help=_OUT_HELP)
def predict_cmd(clips, run_dir, checkpoints, split, texts, manifest, asr, store, out) -> None:
    """Predict new clips with a trained run, or a stored split with checkpoints.

    Clips are decoded and encoded with the encoder versions the checkpoints
    were trained on; a bad file is reported on stderr and the others are
    predicted (exit code 2 only when nothing could be). With AGT the output
    adds the modality weights w_audio, w_video, w_text. A clip without text
    is transcribed by the run's recogniser (a run whose text source is asr or
    auto), else by --asr; text_source says where each row's text came from.

    \b
    Example:
      mer predict --run runs/quickstart clip.mp4 --text "I can't believe it" --out -
      mer predict --run runs/quickstart --manifest new/manifest.csv --out new_preds.csv
      mer predict --run runs/quickstart clip.mp4 --asr whisper:openai/whisper-large-v3 --out -
      mer predict --checkpoint runs/quickstart/checkpoints/agt_s0_* --split test --out preds.csv
    """
    _writable_file(out)
    if not (clips or manifest or run_dir):
        _predict_stored(checkpoints, store, split or "test", out)
        return
    if split:
        raise MerError("--split predicts stored features with --checkpoint; with --run give clip files or --manifest")
    if not (clips or manifest):
        raise MerError("--run: give clip files or --manifest to predict")
    from mer.serve.predictor import load_predictor, predict_clips

    predictor = load_predictor(run_dir, checkpoints, asr=_asr_spec(asr))
    if predictor.shift_warning:
        click.echo(predictor.shift_warning, err=True)
    frame, problems = predict_clips(predictor, clips, texts, manifest, store)
    for problem in problems:
        click.echo(f"skipped {problem}", err=True)
    if frame.empty:
        raise MerError(f"nothing could be predicted ({len(problems)} bad input(s), see above)")
    _emit(frame, out, f"({len(frame)} predicted, {len(problems)} skipped)")
    hint = f"mer serve --run {run_dir}" if run_dir else f"mer evaluate {out} --truth <manifest.csv>"
    click.echo(f"next: {hint}", err=out == "-")


def _emit(frame, out: str, note: str = "") -> None:
    """Write predictions to ``out``, or to stdout for ``-`` (then the status lines go to stderr)."""
    from mer.runfolder import write_predictions

    if out == "-":
        click.echo(frame.to_csv(index=False, float_format="%.6f"), nl=False)
    else:
        click.echo(f"wrote {write_predictions(frame, out)}" + (f" {note}" if note else ""))


def _predict_stored(checkpoints, store, split, out) -> None:
    """``mer predict --checkpoint DIR --split S``: a split of the store's features."""
    from mer.train.predict import predict

    if not checkpoints:
        raise MerError("give --checkpoint DIR (a stored split) or --run RUN_DIR with clip files")
    _emit(predict(list(checkpoints), store, split), out, f"({split} split)")
    click.echo(f"next: mer evaluate {out if out != '-' else 'preds.csv'} --truth <manifest.csv or truth.csv>",
               err=out == "-")


@cli.command("serve")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None, help="Trained run to serve.")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(file_okay=False),
              help="Serve the seed ensemble of these checkpoint folders instead of the run's final predictor.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 exposes it).")
@click.option("--port", default=8000, show_default=True)
@click.option("--replicas", default=1, show_default=True, help="Replicas, each with its own predictor.")
@click.option("--gpus-per-replica", default=0.0, show_default=True, help="GPU share per replica (0 = CPU).")
@click.option("--max-upload-mb", default=50.0, show_default=True, help="Largest uploaded clip.")
@click.option("--max-seconds", default=60.0, show_default=True, help="Longest clip (media duration).")
@click.option("--allowed-root", type=click.Path(file_okay=False, exists=True), default=None,
              help="Also accept JSON {\"paths\": [...]} naming files inside this folder.")
@click.option("--max-batch-size", default=8, show_default=True, help="Requests predicted together (1 = no batching).")
@click.option("--asr", default=None, metavar="ENGINE[:MODEL]", help=_ASR_HELP)
def serve_cmd(run_dir, checkpoints, host, port, replicas, gpus_per_replica, max_upload_mb, max_seconds,
              allowed_root, max_batch_size, asr) -> None:
    """Serve a trained run over HTTP with Ray Serve until Ctrl-C.

    POST /predict (multipart: file, optional text) answers label,
    probabilities, modality weights, the text's source (and the transcript
    when a recogniser made it), encoder versions and model id;
    GET /health; GET /model. Bad input gets a 4xx JSON {"error": ...}.

    \b
    Example:
      mer serve --run runs/quickstart --port 8000
      curl -F file=@clip.mp4 -F text="I can't believe it" http://127.0.0.1:8000/predict
    """
    from mer.runner import run_serve
    from mer.serve.app import ServeArgs, serve_until_interrupted
    from mer.serve.predictor import load_predictor

    # Load once here: a bad run or a changed encoder is a one-line error before Ray starts.
    spec = _asr_spec(asr)
    predictor = load_predictor(run_dir, checkpoints, device="cpu", asr=spec)
    if predictor.shift_warning:
        click.echo(predictor.shift_warning, err=True)
    described = predictor.describe()
    args = ServeArgs(run_dir=run_dir, checkpoints=list(checkpoints), asr=dataclasses.asdict(spec) if spec else None,
                     max_upload_mb=max_upload_mb,
                     max_seconds=max_seconds, allowed_root=allowed_root, max_batch_size=max_batch_size,
                     replicas=replicas, gpus_per_replica=gpus_per_replica)
    url = run_serve(args, host, port)
    click.echo(f"serving {described['predictor']} {described['model_id']} at {url} (Ctrl-C stops)")
    click.echo(f"next: curl -F file=@clip.mp4 -F text=\"...\" {url}/predict   |   curl {url}/model")
    serve_until_interrupted()
    click.echo("stopped")


@cli.command("evaluate")
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.option("--truth", type=click.Path(dir_okay=False), default=None,
              help="Manifest, sample_id,label CSV or the organisers' name,discrete file "
                   "(default: manifest.csv/truth.csv beside the predictions).")
@click.option("--out", type=click.Path(), default=None,
              help="Folder for metrics.json and confusion_test.png (default: PREDICTIONS.metrics.json and "
                   "PREDICTIONS.confusion.png beside the file).")
@click.option("--labels", default=None, help="Comma-separated label set (default: the p_<label> columns, else the six MER labels).")
@click.option("--allow-missing", is_flag=True, help="Score the labeled samples that have a prediction even if some have none.")
@click.option("--force", is_flag=True, help="Replace a run folder's own metrics.json when --out names it.")
def evaluate_cmd(predictions, truth, out, labels, allow_missing, force) -> None:
    """Weighted F1 (sklearn, as the organisers score), accuracy, per-class table and confusion matrix.

    PREDICTIONS is a mer predictions CSV or a submission (name,discrete).
    Refused with the file, row and problem: a duplicated id, a label not in
    the label set (labels are matched exactly, as the organisers match them),
    a missing label or probability, and labeled samples without a prediction
    (unless --allow-missing); predictions without a truth row are counted.

    \b
    Example:
      mer evaluate preds.csv --truth demo_corpus/manifest.csv --out runs/eval
      mer evaluate submission.csv --truth mer2025_demo/track1_test_dis.csv
    """
    from mer.report.metrics import evaluate_file, format_table

    metrics = evaluate_file(predictions, truth, out, labels=_labels(labels), allow_missing=allow_missing, force=force)
    click.echo(format_table(metrics))
    click.echo(f"wrote {', '.join(metrics['files'])}")
    click.echo(f"next: open {metrics['files'][1]}")


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
def report_cmd(run_dir) -> None:
    """Write report.md, report.json and plots for a run folder.

    Renders what the stages left there: metrics.json, selftrain.json (rounds,
    pseudo-labels, WAF per round) and ablation.json (jobs/ablation.yaml).

    \b
    Example:
      mer report runs/quickstart
    """
    from mer.report.report import build_report

    result = build_report(run_dir)
    for path in result["files"]:
        click.echo(f"wrote {path}")
    click.echo(f"next: open {run_dir}/report.md")


_ADDRESS_HELP = "Ray dashboard URL, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)."


def _addr_hint(address) -> str:
    return f" --address {address}" if address else ""


def _exit_on_failure(job_id, state, address) -> None:
    """``--follow`` ends with exit code 1 when the job FAILED or was STOPPED."""
    click.echo(f"{job_id}: {state}")
    if state in ("FAILED", "STOPPED"):
        click.echo(f"next: mer status {job_id}{_addr_hint(address)}", err=True)
        sys.exit(1)


@cli.command("submit", context_settings={"ignore_unknown_options": True})
@click.argument("job_file", type=click.Path())
@click.argument("overrides", nargs=-1)
@click.option("--address", default=None, help=_ADDRESS_HELP)
@click.option("--working-dir", default=".", show_default=True, type=click.Path(file_okay=False, exists=True),
              help="Folder shipped with the job (code and job files; data and stores are excluded).")
@click.option("--follow", is_flag=True, help="Stream the job's logs; exit 1 if it fails or is stopped.")
@click.option("--entrypoint-cpus", type=float, default=None, help="CPUs reserved for the job's driver process.")
def submit_cmd(job_file, overrides, address, working_dir, follow, entrypoint_cpus) -> None:
    """Submit a job YAML to a Ray cluster (validated here first).

    \b
    Example:
      mer submit jobs/quickstart.yaml store=s3://bucket/mer --address http://HEAD:8265 --follow
    """
    from mer.remote import manage
    from mer.remote.client import resolve_address
    from mer.remote.submit import build_submission, is_local_address, submit

    sub = build_submission(job_file, overrides, working_dir)
    url = resolve_address(address)
    job_id = submit(sub, url, entrypoint_num_cpus=entrypoint_cpus)
    click.echo(f"submitted {job_id} ({sub.job.name}) to {url}")
    click.echo(f"  entrypoint: {sub.entrypoint}")
    if sub.path_overrides and not is_local_address(url):
        click.echo("  note: these paths must exist on the cluster (shared filesystem or s3://): "
                   + " ".join(sub.path_overrides))
    hint = _addr_hint(address)
    if follow:
        try:
            state = manage.follow(job_id, url)
        except KeyboardInterrupt:
            click.echo(f"\nstopped following; the job keeps running. next: mer stop {job_id}{hint}")
            sys.exit(130)
        _exit_on_failure(job_id, state, address)
        click.echo(f"next: results in {sub.job.run_dir} ; store at {sub.job.store}")
    else:
        click.echo(f"dashboard: {url}/#/jobs/{job_id}")
        click.echo(f"next: mer logs {job_id} --follow{hint}   |   mer status {job_id}{hint}   |   mer stop {job_id}{hint}")


@cli.command("status")
@click.argument("job_id")
@click.option("--address", default=None, help=_ADDRESS_HELP)
def status_cmd(job_id, address) -> None:
    """Print a submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED).

    \b
    Example:
      mer status mer-quickstart-1a2b3c4d --address http://HEAD:8265
    """
    from mer.remote import manage

    state, message = manage.status(job_id, address)
    click.echo(f"{job_id}: {state}" + (f" ({message})" if message else ""))
    click.echo(f"next: mer logs {job_id}{_addr_hint(address)}")


@cli.command("logs")
@click.argument("job_id")
@click.option("--address", default=None, help=_ADDRESS_HELP)
@click.option("--follow", "-f", is_flag=True, help="Stream until the job ends; exit 1 if it fails or is stopped.")
def logs_cmd(job_id, address, follow) -> None:
    """Print a submitted job's logs (the driver's stdout and stderr).

    \b
    Example:
      mer logs mer-quickstart-1a2b3c4d --follow --address http://HEAD:8265
    """
    from mer.remote import manage

    if follow:
        _exit_on_failure(job_id, manage.follow(job_id, address), address)
    else:
        click.echo(manage.logs(job_id, address), nl=False)
        click.echo(f"next: mer status {job_id}{_addr_hint(address)}")


@cli.command("stop")
@click.argument("job_id")
@click.option("--address", default=None, help=_ADDRESS_HELP)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the job to end.")
def stop_cmd(job_id, address, timeout) -> None:
    """Stop a running job and wait until it has ended.

    \b
    Example:
      mer stop mer-quickstart-1a2b3c4d --address http://HEAD:8265
    """
    from mer.remote import manage

    click.echo(f"{job_id}: {manage.stop(job_id, address, timeout_s=timeout)}")
    click.echo(f"next: mer list{_addr_hint(address)}")


@cli.command("list")
@click.option("--address", default=None, help=_ADDRESS_HELP)
@click.option("--all", "include_all", is_flag=True, help="Include jobs not submitted by mer.")
def list_cmd(address, include_all) -> None:
    """Table of mer jobs on the cluster: id, status, start time, job name.

    \b
    Example:
      mer list --address http://HEAD:8265
    """
    from mer.remote import manage

    rows = manage.list_jobs(address, include_all=include_all)
    click.echo(manage.format_table(rows))
    if rows:
        click.echo(f"next: mer logs {rows[-1].submission_id}{_addr_hint(address)}")
    else:
        click.echo(f"next: mer submit jobs/quickstart.yaml{_addr_hint(address)}")


@cli.group()
def export() -> None:
    """Write a run's results in other tools' formats."""


@export.command("submission")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True), help="A trained run.")
@click.option("--out", default="submission.csv", show_default=True, help="The CSV to write (name,discrete).")
def export_submission(run_dir, out) -> None:
    """The challenge submission: one name,discrete row per candidate, from the run's final predictor.

    Refused (nothing written) when any candidate has no prediction, e.g. its
    clip was quarantined: the organisers score every candidate.

    \b
    Example:
      mer export submission --run runs/mer2025 --out submission.csv
    """
    from mer.export import submission

    _writable_file(out)
    path, rows = submission(run_dir, out)
    click.echo(f"wrote {path}: {rows} candidates")
    click.echo(f"next: upload {path}, or score it: mer evaluate {path} --truth <name,discrete labels>")


@cli.group()
def finetune() -> None:
    """DeepSpeed ZeRO fine-tuning of the extractors (run it as a job stage: ``finetune``)."""


@finetune.command("plan")
@click.option("--model", required=True, help="Shipped name (baichuan-13b), config.json, model folder or hub name.")
@click.option("--gpus", default=8, show_default=True, help="GPUs in total.")
@click.option("--gpu-mem", default=80.0, show_default=True, help="GB per GPU.")
@click.option("--nodes", default=1, show_default=True, help="Nodes the GPUs are spread over.")
@click.option("--trust-remote-code", is_flag=True, help="Allow hub code when reading a hub config (Baichuan).")
def finetune_plan(model, gpus, gpu_mem, nodes, trust_remote_code) -> None:
    """Per-GPU memory of ZeRO-2/ZeRO-3 setups, from DeepSpeed's own estimators.

    \b
    Example:
      mer finetune plan --model baichuan-13b --gpus 8 --gpu-mem 80
    """
    from mer.finetune.plan import make_plan

    plan = make_plan(model, gpus, gpu_mem, nodes=nodes, trust_remote_code=trust_remote_code)
    click.echo(plan.table())
    click.echo("\nDeepSpeed's estimators (model states only; activations come on top):")
    click.echo(plan.deepspeed_tables.rstrip())
    click.echo("next: put the chosen zero_optimization block in finetune.deepspeed of jobs/finetune_text.yaml, "
               "then mer submit jobs/finetune_text.yaml --address <head>")

def _one_line(exc: BaseException) -> str:
    """An exception as one line: ours as they are, a library's with its type (the traceback comes with -v)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, MerError):
        return text
    return f"{type(exc).__name__}: {text[:400]}" + ("..." if len(text) > 400 else "") + " (mer -v ... shows the traceback)"


def main() -> None:
    """Console entry point: every failure is one line ``error: ...`` with exit code 2; ``-v`` adds the traceback."""
    verbose = any(a in ("-v", "--verbose") for a in sys.argv[1:]) or bool(os.environ.get("MER_TRACEBACK"))
    try:
        cli(standalone_mode=False, prog_name="mer")
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # a bad option or argument: one line too, with where to look
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
        click.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as exc:  # the one error path: a library's exception is a one-line error too
        if verbose:
            traceback.print_exc()
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(getattr(exc, "exit_code", 2) if isinstance(exc, MerError) else 2)


if __name__ == "__main__":
    main()
