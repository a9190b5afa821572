"""The experiment report of a run folder: report.md, report.json and PNG plots.

Renders what the stages left in ``run_dir`` and computes nothing that needs a
model: ``metrics.json`` (supervised evaluation), ``selftrain.json`` (per-round
records of the self-training stage), ``robustness.json`` (models on corrupted
test media) and ``ablation.json`` (cells of the ablation runner, one list of
per-seed values per metric). A missing file drops its
section, so the same function reports a quickstart run and a full ablation.
Every ablation cell is shown as mean +- std over its seeds (sample std, ddof=1;
a single seed shows no +-).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mer.errors import MerError
from mer.runfolder import ABLATION, METRICS, REPORT_JSON, REPORT_MD, ROBUSTNESS, SELFTRAIN, RunFolder

# Matplotlib is imported lazily (it takes a second): only plotting needs it.
AXIS_TITLES = {
    "fusion": "Fusion (supervised only)",
    "voting": "Self-training and voting",
    "threshold": "Pseudo-label threshold sweep",
    "balance": "Voting on a balanced vs the shifted test set",
    "corruption": "Corrupted test media (robustness.conditions)",
    "audio_encoder": "Audio encoder swap",
}
METRIC_TITLES = {
    "waf": "test WAF",
    "added": "pseudo-labels added",
    "pseudo_accuracy": "pseudo-label acc.",
}
#: Classes whose F1 every quality table shows when the run does not name its own
#: (``selftrain.prior_classes``: the ones MER-SEMI's test set is full of).
DEFAULT_FOCUS = ("worried", "sad")


class ReportError(MerError):
    """A run folder with nothing to report."""


def mean_std(values: list[float] | None) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for one value) of the finite values."""
    vals = [v for v in (values or []) if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    arr = np.asarray(vals, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def fmt_mean_std(values: list[float] | None, digits: int = 2, scale: float = 100.0) -> str:
    """``[0.81, 0.83] -> '82.00 +- 1.41'`` (percent by default); ``-`` when empty."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    if len(values or []) < 2:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} +- {std * scale:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _metrics_section(name: str, metrics: dict) -> list[str]:
    lines = [f"### {name}", "", f"weighted F1 {metrics['weighted_f1'] * 100:.2f}, accuracy {metrics['accuracy'] * 100:.2f}", ""]
    rows = [
        [label, f"{m['precision'] * 100:.1f}", f"{m['recall'] * 100:.1f}", f"{m['f1'] * 100:.1f}", str(m["support"])]
        for label, m in metrics["per_class"].items()
    ]
    return lines + _table(["class", "precision", "recall", "F1", "support"], rows) + [""]


def _rounds_section(selftrain: dict) -> list[str]:
    labels = selftrain.get("labels", [])
    cfg = selftrain.get("config", {})
    other = "test WAF, CV-weighted voters" if cfg.get("voters", "all") == "all" else "test WAF, paper vote (all voters)"
    header = ["round", "trained on pseudo-labels", "added", *[f"+{c}" for c in labels], "pseudo acc.", "test WAF (vote)",
              "per seed", other, "voter CV WAF"]
    rows = []
    for rec in selftrain["rounds"]:
        per_class = rec.get("added_per_class") or {}
        acc = rec.get("pseudo_accuracy")
        rows.append(
            [
                str(rec["round"]),
                str(rec.get("trained_on", 0)),
                str(rec.get("added", 0)),
                *[str(per_class.get(c, 0)) for c in labels],
                "-" if acc is None else f"{acc * 100:.1f}",
                f"{rec['test_weighted_f1'] * 100:.2f}" if rec.get("test_weighted_f1") is not None else "-",
                fmt_mean_std(rec.get("test_weighted_f1_per_seed")),
                "-" if rec.get("test_weighted_f1_other_voters") is None else f"{rec['test_weighted_f1_other_voters'] * 100:.2f}",
                ", ".join(f"{m} {v * 100:.1f}" for m, v in (rec.get("models_cv") or {}).items()) or "-",
            ]
        )
    intro = (
        f"run_id `{selftrain.get('run_id')}`; models {cfg.get('models')}, seeds {selftrain.get('seeds')}, "
        f"voting `{cfg.get('voting')}` (prior classes {cfg.get('prior_classes')}, mode `{cfg.get('prior_mode')}`), "
        f"threshold {cfg.get('threshold')}, voters `{cfg.get('voters', 'all')}`; stopped: {selftrain.get('stopped')}. "
        "The other vote re-votes the same round's models."
    )
    return ["## Self-training rounds", "", intro, ""] + _table(header, rows) + [""]


def _quality_section(selftrain: dict, focus) -> list[str]:
    """Self-training + voting vs the supervised audio-guided model, per seed."""
    cmp = selftrain.get("comparison")
    if not cmp:
        return []
    header = ["system", "test WAF", *[f"F1 {c}" for c in focus]]
    rows = [
        [name, fmt_mean_std(cell.get("waf")), *[fmt_mean_std(cell.get(f"f1_{c}")) for c in focus]]
        for name, cell in cmp.items()
    ]
    names = list(cmp)
    lines = ["## Self-training vs supervised", "", "Mean +- std over seeds (percent)."]
    if len(names) >= 2:
        base, best = mean_std(cmp[names[0]].get("waf"))[0], mean_std(cmp[names[-1]].get("waf"))[0]
        if not (math.isnan(base) or math.isnan(best)):
            lines.append(f"`{names[-1]}` vs `{names[0]}`: {(best - base) * 100:+.2f} WAF points.")
    return lines + [""] + _table(header, rows) + [""]


def _ablation_section(ablation: dict) -> list[str]:
    lines = ["## Ablations", "", f"Each cell: mean +- std over seeds {ablation.get('seeds')} (percent, counts raw)."]
    for note in ablation.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")
    for axis, cells in ablation.get("axes", {}).items():
        lines += [f"### {AXIS_TITLES.get(axis, axis)}", ""]
        if not cells:
            lines += ["(not run)", ""]
            continue
        metrics: list[str] = []
        for cell in cells:
            metrics += [k for k, v in cell.items() if isinstance(v, list) and k not in metrics]
        header = ["variant", *[METRIC_TITLES.get(m, m.replace("_", " ")) for m in metrics]]
        rows = [
            [cell["variant"], *[fmt_mean_std(cell.get(m), scale=1.0 if m == "added" else 100.0, digits=1 if m == "added" else 2) for m in metrics]]
            for cell in cells
        ]
        lines += _table(header, rows) + [""]
    return lines


def _robustness_section(robustness: dict, focus) -> list[str]:
    """Conditions x models (test WAF), each model's share of its clean score, and the best model per condition."""
    rows = robustness["conditions"]
    columns = list(rows[0]["cells"]) if rows else []
    clean = {m: mean_std(rows[0]["cells"][m].get("waf"))[0] for m in columns} if rows else {}
    table_rows, best = [], []
    for row in rows:
        means = {m: mean_std(c.get("waf"))[0] for m, c in row["cells"].items()}
        table_rows.append([row["condition"], *[fmt_mean_std(row["cells"].get(m, {}).get("waf")) for m in columns]])
        finite = {m: v for m, v in means.items() if not math.isnan(v)}
        if finite:
            top = max(finite, key=finite.get)
            best.append(f"{row['condition']}: {top} ({finite[top] * 100:.1f})")
    kept = [[row["condition"], *[f"{mean_std(row['cells'][m].get('waf'))[0] / clean[m] * 100:.0f} %"
                                 if clean.get(m) and m in row["cells"] else "-" for m in columns]] for row in rows[1:]]
    focus_rows = [[row["condition"], *[fmt_mean_std(row["cells"][m].get(f"f1_{c}")) for m in columns[:2] for c in focus]]
                  for row in rows]
    recipe = robustness.get("recipe", {})
    knobs = ", ".join(f"{k} {recipe[k]}" for k in ("modality_dropout", "feature_noise", "audio_augment", "augment_p",
                                                      "audio_gate") if recipe.get(k))
    lines = ["## Robustness: corrupted test media", "",
             f"Test WAF, mean +- std over seeds {robustness.get('seeds')} (percent). Training recipe: "
             f"{knobs or 'no robustness regulariser'}. Nothing was trained or chosen on these conditions.", ""]
    lines += _table(["condition", *columns], table_rows) + [""]
    lines += ["Share of each model's clean WAF:", ""] + _table(["condition", *columns], kept) + [""]
    lines += [f"F1 of {', '.join(focus)} for {', '.join(columns[:2])}:", ""]
    lines += _table(["condition", *[f"{m} F1 {c}" for m in columns[:2] for c in focus]], focus_rows) + [""]
    lines += ["Best model per condition: " + "; ".join(best) + ".", ""]
    unseen = [row["condition"] for row in rows[1:] if not row.get("seen_in_training", False)]
    lines += ["Never seen in training (neither noisy copies nor modality dropout cover them): "
              + (", ".join(unseen) if unseen else "none") + ".", ""]
    return lines


def _summarise_ablation(ablation: dict) -> dict:
    out = {}
    for axis, cells in ablation.get("axes", {}).items():
        out[axis] = {
            cell["variant"]: {k: dict(zip(("mean", "std"), mean_std(v))) for k, v in cell.items() if isinstance(v, list)}
            for cell in cells
        }
    return out


def plot_rounds(selftrain: dict, run: RunFolder) -> list[Path]:
    """WAF per round, and pseudo-labels added + their accuracy per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = selftrain["rounds"]
    xs = [r["round"] for r in rounds]
    paths = []

    fig, ax = plt.subplots(figsize=(5, 3.5))
    waf = [r.get("test_weighted_f1") for r in rounds]
    ax.plot(xs, [np.nan if w is None else w * 100 for w in waf], marker="o", label="vote (seed ensemble)")
    seeds = [mean_std(r.get("test_weighted_f1_per_seed")) for r in rounds]
    if any(not math.isnan(m) for m, _ in seeds):
        ax.errorbar(xs, [m * 100 for m, _ in seeds], yerr=[s * 100 for _, s in seeds], marker="s", capsize=3, label="vote per seed (mean +- std)")
    ax.set(xlabel="round (0 = supervised)", ylabel="test weighted F1 (%)", title="Test WAF per round")
    ax.set_xticks(xs)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(run.plot("waf_per_round"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(xs, [r.get("added", 0) for r in rounds], color="tab:blue", alpha=0.7)
    ax.set(xlabel="round", ylabel="pseudo-labels added", title="Pseudo-labels per round")
    ax.set_xticks(xs)
    accs = [r.get("pseudo_accuracy") for r in rounds]
    if any(a is not None for a in accs):
        ax2 = ax.twinx()
        ax2.plot(xs, [np.nan if a is None else a * 100 for a in accs], color="tab:red", marker="o")
        ax2.set_ylabel("accuracy vs hidden truth (%)", color="tab:red")
        ax2.set_ylim(0, 100)
    fig.tight_layout()
    paths.append(run.plot("pseudo_labels_per_round"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def build_report(run_dir: str | Path) -> dict:
    """Write ``report.md``, ``report.json`` and plots into ``run_dir``.

    Args:
        run_dir: a run folder (``mer run`` output or an ablation run).

    Returns:
        The report dict written to ``report.json`` (its ``files`` lists what was written).

    Raises:
        ReportError: the folder has none of metrics.json, selftrain.json, ablation.json.
    """
    from mer.report.metrics import plot_confusion

    run = RunFolder(run_dir)
    run_dir = run.path
    metrics = run.read_if_present(METRICS)
    selftrain = run.read_if_present(SELFTRAIN)
    ablation = run.read_if_present(ABLATION)
    robustness = run.read_if_present(ROBUSTNESS)
    if metrics is None and selftrain is None and ablation is None and robustness is None:
        raise ReportError(f"{run_dir}: nothing to report (no metrics.json, selftrain.json, robustness.json or "
                          "ablation.json; run the evaluate/selftrain stages first)")

    name = (selftrain or ablation or {}).get("name") or run_dir.name
    focus = ((selftrain or {}).get("config") or {}).get("prior_classes") or (metrics or {}).get("focus_classes") \
        or list(DEFAULT_FOCUS)
    lines = [f"# Report: {name}", "", f"Run folder `{run_dir}`.", ""]
    report: dict[str, Any] = {"name": name, "run_dir": str(run_dir), "files": []}
    plots: list[Path] = []

    candidates = [("evaluate stage (metrics.json)", metrics)]
    if selftrain:
        model = (metrics or {}).get("cv_train", {}) or {}
        candidates += [
            (f"train stage (predictions_test_{model.get('model', 'supervised')}.csv)", selftrain.get("train_stage")),
            ("supervised vote of the self-training models (round 0)", selftrain.get("supervised")),
            ("self-training final vote (predictions_test.csv)", selftrain.get("final")),
        ]
    summary = [[name, f"{m['weighted_f1'] * 100:.2f}", f"{m['accuracy'] * 100:.2f}"] for name, m in candidates
               if m and m.get("weighted_f1") is not None]
    if summary:
        lines += ["## Summary", ""] + _table(["system", "test WAF", "accuracy"], summary) + [""]
    systems = (metrics or {}).get("systems") or {}
    if systems:
        rows = [[name, fmt_mean_std(sys_["cv"].get("per_seed")), fmt_mean_std((sys_.get("test") or {}).get("waf")),
                 *[fmt_mean_std((sys_.get("test") or {}).get(f"f1_{c}")) for c in focus]]
                for name, sys_ in systems.items()]
        cv = next(iter(systems.values()))["cv"]
        apart = ("folds keep the manifest's groups apart" if cv.get("grouped") else
                 "the manifest has no group column, so folds may share a speaker or a source video: CV is "
                 "optimistic under speaker or recording shift")
        lines += ["## Supervised systems (mean +- std over seeds, percent)", "",
                  f"CV = weighted F1 on the labeled train split ({cv['scheme']}; epochs chosen on an inner split, "
                  f"the scored rows only score; {apart}), the score settings are chosen by; "
                  "the linear late-fusion baseline is the floor.", ""]
        lines += _table(["system", "CV WAF (train)", "test WAF", *[f"F1 {c}" for c in focus]], rows) + [""]
        report["systems"] = systems

    confusions = []
    if selftrain:
        lines += _rounds_section(selftrain) + _quality_section(selftrain, focus)
        plots += plot_rounds(selftrain, run)
        report["selftrain"] = {k: selftrain.get(k) for k in ("run_id", "rounds", "stopped", "comparison", "config")}
        if selftrain.get("supervised"):
            confusions.append(("supervised vote (round 0)", selftrain["supervised"], "confusion_supervised"))
        if selftrain.get("final"):
            confusions.append(("self-training final vote", selftrain["final"], "confusion_selftrain"))
    elif metrics and metrics.get("weighted_f1") is not None:
        confusions.append(("supervised", metrics, "confusion_test"))

    if confusions:
        lines += ["## Per-class results", ""]
        for title, m, png in confusions:
            lines += _metrics_section(title, m)
            plots.append(plot_confusion(m, run.plot(png)))
        report["per_class"] = {title: m["per_class"] for title, m, _ in confusions}

    if robustness:
        lines += _robustness_section(robustness, focus)
        report["robustness"] = {row["condition"]: {m: dict(zip(("mean", "std"), mean_std(c.get("waf"))))
                                                   for m, c in row["cells"].items()}
                                for row in robustness["conditions"]}

    if ablation:
        lines += _ablation_section(ablation)
        report["ablation"] = _summarise_ablation(ablation)

    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    report["files"] = [str(p) for p in plots] + [str(run / REPORT_MD), str(run / REPORT_JSON)]
    (run / REPORT_MD).write_text("\n".join(lines))
    run.write(REPORT_JSON, report)
    return report
