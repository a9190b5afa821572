"""The ``mer`` command line: thin click commands over the package's functions.

Each command parses its arguments, calls one function, prints the result and
what to do next. Heavy imports (torch, ray, lancedb) happen inside commands so
``mer --help`` stays instant. Every ``MerError`` becomes ``error: <one line>``
with exit code 2.
"""

from __future__ import annotations

import sys

import click

from mer.errors import MerError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mer")
def cli() -> None:
    """mer: semi-supervised multimodal emotion recognition.

    A distributed feature store (Ray + LanceDB) plus trainer for the
    Audio-Guided Transformer (arXiv 2409.05007).

    \b
    Quick start:
      mer demo-data demo_corpus
      mer run jobs/quickstart.yaml
    """


@cli.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n-train", default=240, show_default=True, help="Labeled training clips.")
@click.option("--n-unlabeled", default=240, show_default=True, help="Unlabeled clips (test label distribution).")
@click.option("--n-test", default=120, show_default=True, help="Labeled test clips.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same corpus.")
@click.option("--balanced-test", is_flag=True, help="Test split with every label equally common (no label shift).")
def demo_data(out, n_train, n_unlabeled, n_test, seed, balanced_test) -> None:
    """Write a synthetic corpus of real mp4 clips (face + voice) and a manifest.

    \b
    Example:
      mer demo-data demo_corpus --n-train 300 --seed 1
    """
    from mer.corpus.demo import make_demo_corpus

    manifest = make_demo_corpus(
        out, n_train=n_train, n_unlabeled=n_unlabeled, n_test=n_test, seed=seed, balanced_test=balanced_test
    )
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
    from pathlib import Path

    from mer.config import MER2024_LABELS
    from mer.corpus.validate import validate_manifest

    label_set = labels.split(",") if labels else MER2024_LABELS
    result = validate_manifest(manifest, label_set, check_media=not no_media)
    out_dir = Path(out) if out else Path(manifest).parent
    quarantine = result.write_quarantine(out_dir)
    click.echo(result.summary_table())
    click.echo(f"{len(result.clean)} usable rows, {len(result.quarantine)} quarantined -> {quarantine}")
    if result.clean.empty:
        raise MerError(f"{manifest}: no usable rows (see {quarantine})")
    click.echo("next: mer run jobs/quickstart.yaml manifest=" + str(manifest))


@cli.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("job_file", type=click.Path())
@click.argument("overrides", nargs=-1)
def run(job_file, overrides) -> None:
    """Run a job's stages on embedded Ray (or the cluster this runs inside).

    \b
    Example:
      mer run jobs/quickstart.yaml train.epochs=5 store=/data/mer_store
    """
    from mer.config import load_job
    from mer.pipeline import run_job

    job = load_job(job_file, overrides)
    run_job(job, echo=click.echo)
    click.echo(f"results in {job.run_dir}/ ; store at {job.store}")
    click.echo(f"next: mer query tables --store {job.store}")


def main() -> None:
    """Console entry point: one-line errors, exit code 2, no traceback."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
