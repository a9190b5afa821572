"""Report rendering from constructed run folders (no training, no Ray)."""

import json

import pytest
from click.testing import CliRunner

from mer.cli import cli
from mer.report.report import ReportError, build_report, fmt_mean_std, mean_std

LABELS = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


def metrics(waf: float) -> dict:
    per_class = {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10} for c in LABELS}
    per_class["sad"]["f1"] = waf
    return {
        "weighted_f1": waf,
        "accuracy": waf,
        "per_class": per_class,
        "confusion": [[10 if i == j else 0 for j in range(6)] for i in range(6)],
        "labels": LABELS,
    }


def round_record(r: int, added: int, acc: float | None, waf: float) -> dict:
    return {
        "round": r,
        "trained_on": 10 * r,
        "added": added,
        "added_per_class": {**dict.fromkeys(LABELS, 0), "sad": added},
        "pseudo_accuracy": acc,
        "test_weighted_f1": waf,
        "test_weighted_f1_per_seed": [waf - 0.01, waf + 0.01],
        "vote_per_seed": {"waf": [waf - 0.01, waf + 0.01], "f1_sad": [0.4, 0.5]},
        "models": {"agt": {"waf": [0.5, 0.6], "f1_sad": [0.3, 0.4], "f1_worried": [0.2, 0.2]}},
    }


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics(0.55)))
    selftrain = {
        "name": "demo",
        "run_id": "demo-1234abcd",
        "labels": LABELS,
        "seeds": [0, 1],
        "config": {"voting": "prior", "threshold": 0.9, "models": ["agt", "unimodal"], "prior_classes": ["worried", "sad"]},
        "stopped": "rounds",
        "rounds": [round_record(0, 12, 0.75, 0.6), round_record(1, 8, 0.5, 0.65), round_record(2, 0, None, 0.7)],
        "supervised": metrics(0.6),
        "final": metrics(0.7),
        "comparison": {
            "supervised agt": {"waf": [0.6, 0.62], "f1_sad": [0.3, 0.4], "f1_worried": [0.1, 0.2]},
            "self-training + prior vote (round 2)": {"waf": [0.7, 0.72], "f1_sad": [0.5, 0.6], "f1_worried": [0.3, 0.4]},
        },
    }
    (tmp_path / "selftrain.json").write_text(json.dumps(selftrain))
    ablation = {
        "name": "demo",
        "seeds": [0, 1],
        "axes": {
            "fusion": [{"variant": "concat", "waf": [0.5, 0.52]}, {"variant": "agt", "waf": [0.6, 0.64]}],
            "threshold": [{"variant": "tau = 0.8", "waf": [0.6, 0.6], "added": [40.0], "pseudo_accuracy": [0.7]}],
            "corruption": [],
        },
        "notes": ["balance: not run"],
    }
    (tmp_path / "ablation.json").write_text(json.dumps(ablation))
    cells = lambda agt, ref: {"agt": {"waf": agt, "f1_worried": [0.5, 0.7], "f1_sad": [0.4, 0.4]},  # noqa: E731
                              "video+text: linear": {"waf": ref, "f1_worried": [0.5], "f1_sad": [0.5]}}
    robustness = {"name": "demo", "seeds": [0, 1], "recipe": {"modality_dropout": 0.3},
                  "conditions": [{"condition": "clean", "role": None, "cells": cells([0.8, 0.9], [0.6, 0.6])},
                                 {"condition": "no audio", "role": "audio", "seen_in_training": False,
                                  "cells": cells([0.5, 0.5], [0.6, 0.6])}]}
    (tmp_path / "robustness.json").write_text(json.dumps(robustness))
    return tmp_path


def test_mean_std_uses_sample_std_and_skips_missing():
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1414213), rel=1e-5)
    assert mean_std([0.5, None]) == (0.5, 0.0)
    assert fmt_mean_std([0.81, 0.83]) == "82.00 +- 1.41"
    assert fmt_mean_std([0.5]) == "50.00" and fmt_mean_std([]) == "-"


def test_report_sections_tables_and_plots(run_dir):
    result = build_report(run_dir)
    md = (run_dir / "report.md").read_text()
    for section in (
        "# Report: demo",
        "## Summary",
        "## Self-training rounds",
        "## Self-training vs supervised",
        "## Per-class results",
        "## Ablations",
        "### Fusion (supervised only)",
        "### Pseudo-label threshold sweep",
        "### Corrupted test media (robustness.conditions)",
        "## Robustness: corrupted test media",
        "## Plots",
    ):
        assert section in md, section
    # round table: round 1 added 8 sad labels at 50 % accuracy, vote WAF 65, per seed 65 +- 1.41
    assert "| 1 | 10 | 8 | 0 | 0 | 0 | 8 | 0 | 0 | 50.0 | 65.00 | 65.00 +- 1.41 |" in md
    assert "| agt | 62.00 +- 2.83 |" in md
    assert "| tau = 0.8 | 60.00 +- 0.00 | 40.0 | 70.00 |" in md
    assert "+10.00 WAF points" in md
    # robustness: per condition and model, share of clean, best model per condition
    assert "| no audio | 50.00 +- 0.00 | 60.00 +- 0.00 |" in md and "| no audio | 59 % | 100 % |" in md
    assert "clean: agt (85.0); no audio: video+text: linear (60.0)" in md and "modality_dropout 0.3" in md
    assert "Never seen in training (neither noisy copies nor modality dropout cover them): no audio." in md
    assert "(not run)" in md
    for png in ("waf_per_round.png", "pseudo_labels_per_round.png", "confusion_supervised.png", "confusion_selftrain.png"):
        assert (run_dir / png).stat().st_size > 1000
        assert f"({png})" in md
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["ablation"]["fusion"]["agt"]["waf"]["mean"] == pytest.approx(0.62)
    assert saved["per_class"]["self-training final vote"]["sad"]["f1"] == pytest.approx(0.7)
    assert str(run_dir / "report.md") in result["files"]


def test_report_of_a_supervised_only_run(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics(0.55)))
    build_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Summary" in md and "| sad | 50.0 | 50.0 | 55.0 | 10 |" in md and "## Self-training rounds" not in md
    assert (tmp_path / "confusion_test.png").exists()


def test_empty_run_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(ReportError, match="nothing to report"):
        build_report(tmp_path)


def test_cli_report(run_dir, tmp_path):
    out = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert out.exit_code == 0, out.output
    assert "report.md" in out.output and "next: open" in out.output
