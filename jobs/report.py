"""Write RUN/report.md with PNG figures: the seeds' tables, correlation histograms, passes
per group, and an image grid of the best cases' edits.

    python -m jobs.report --run RUN [--bundle DIR]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from compute.sessions import make_session, run_single
from compute.tables import read_metadata, vector_matrix
from compute.vectors_table import VECTORS_FILE, read_vectors
from jobs.bundles import resolve_bundle
from jobs.cli import UsageError, parser, run_main
from jobs.test import CASES_FILE, SUMMARY_FILE
from vectors.groups import GROUP_NAMES, PROPERTIES

REPORT_FILE = "report.md"
GRID_CASES = 3


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def correlation_histograms(cases, out: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, prop in zip(axes, PROPERTIES):
        values = cases[f"corr_{prop}"].to_numpy()
        ax.hist(values[np.isfinite(values)], bins=np.linspace(-1, 1, 41), color="#4477aa")
        ax.set_title(f"corr {prop} (mean {np.nanmean(values):.3f})")
        ax.set_xlabel("Pearson corr, intended vs measured")
    axes[0].set_ylabel("cases")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def passes_per_group(summary: dict, out: Path) -> None:
    plt = _pyplot()
    per = summary["per_group"]
    x = np.arange(len(GROUP_NAMES))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(x - 0.2, [per[g]["cases"] for g in GROUP_NAMES], 0.4, label="cases", color="#bbbbbb")
    ax.bar(x + 0.2, [per[g]["passed"] for g in GROUP_NAMES], 0.4, label="passed", color="#228833")
    ax.set_xticks(x, GROUP_NAMES)
    ax.set_xlabel("group (hair colour, hair length, background: h/l)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def edit_grid(bundle, cases, directions, space: str, schedule: dict, out: Path) -> list[int]:
    """Rows: the best cases (passed first, by sum of |corr|); columns: eyes closed/open,
    the mouth range, the pose range, each with the other two weights at 0."""
    plt = _pyplot()
    order = np.lexsort((-np.nan_to_num(cases["sum_abs_corr"].to_numpy(), nan=-1), ~cases["passed"].to_numpy()))
    chosen = order[:GRID_CASES]
    columns = [("eyes", e) for e in schedule["eyes"]] + [("mouth", m) for m in schedule["mouth"]] + \
              [("pose", p) for p in schedule["pose"]]
    mapping = make_session(bundle.graph_bytes("mapping"), threads=2)
    synthesis = make_session(bundle.graph_bytes("synthesis"), threads=2)
    latent_all = vector_matrix(cases[space])
    groups = cases["group"].to_pylist()
    fig, axes = plt.subplots(len(chosen), len(columns), figsize=(1.3 * len(columns), 1.55 * len(chosen)),
                             squeeze=False)
    for row, i in enumerate(chosen):
        group = groups[i] if (groups[i], "eyes") in directions else "all"
        edits = np.stack([latent_all[i] + weight * directions[(group, prop)] for prop, weight in columns])
        w = run_single(mapping, edits.astype(np.float32)) if space == "z" else edits.astype(np.float32)
        images = run_single(synthesis, w)
        for col, ((prop, weight), image) in enumerate(zip(columns, images)):
            ax = axes[row, col]
            ax.imshow(np.clip((image.transpose(1, 2, 0) + 1) / 2, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{prop} {weight:+g}", fontsize=7)
        axes[row, 0].set_ylabel(f"case {int(cases['case_id'][i])}\n{groups[i]}", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return [int(cases["case_id"][i]) for i in chosen]


def _fmt(value, digits: int = 4) -> str:
    """A figure, or '-' where there is none (imported vectors carry no fit statistics)."""
    return "-" if value is None else f"{value:.{digits}f}"


def group_table(vectors, summary: dict) -> list[str]:
    acc = {(g, p): a for g, p, a in zip(vectors["group"].to_pylist(), vectors["property"].to_pylist(),
                                        vectors["val_accuracy"].to_pylist())}
    size = dict(zip(vectors["group"].to_pylist(), vectors["group_size"].to_pylist()))
    lines = ["| group | samples | SVM acc eyes | mouth | pose | test cases | passed |", "|---|---|---|---|---|---|---|"]
    for g in GROUP_NAMES:
        key = g if g in size else "all"
        per = summary["per_group"][g]
        lines.append(f"| {g} | {size.get(key, '-')} | {_fmt(acc.get((key, 'eyes')), 3)} | {_fmt(acc.get((key, 'mouth')), 3)} "
                     f"| {_fmt(acc.get((key, 'pose')), 3)} | {per['cases']} | {per['passed']} |")
    return lines


def write_report(run: Path, bundle, vectors_path: Path | None = None) -> Path:
    run = Path(run)
    for needed in (CASES_FILE, SUMMARY_FILE):
        if not (run / needed).is_file():
            raise UsageError(f"{run} has no {needed}: run `python -m jobs.test --run {run}` first")
    cases = pq.read_table(run / CASES_FILE)
    summary = json.loads((run / SUMMARY_FILE).read_text())
    test_config = read_metadata(run / CASES_FILE).get("test", {})
    vectors_path = Path(vectors_path or test_config.get("vectors") or run / VECTORS_FILE)
    try:
        vectors, directions, meta = read_vectors(vectors_path)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    space = summary["space"]
    correlation_histograms(cases, run / "correlations.png")
    passes_per_group(summary, run / "passes_per_group.png")
    shown = edit_grid(bundle, cases, directions, space, summary["schedule"], run / "edits.png")
    acc = summary.get("svm_val_accuracy") or {}
    lines = [
        f"# vectorfind report: {run.name}", "",
        f"Latent space **{space}** ({'v7' if space == 'w' else 'v6'}), model `{bundle.manifest['model']}`, "
        f"{summary.get('n_samples', '?')} samples, ratio {summary.get('ratio')}, {summary['cases']} test cases "
        f"x {summary['edits_per_case']} edits.", "",
        "## Results", "",
        "| property | SVM val accuracy | mean corr | mean abs corr | cutoff |", "|---|---|---|---|---|",
    ]
    for p in PROPERTIES:
        lines.append(f"| {p} | {_fmt(acc.get(p))} | {summary['mean_corr'][p]:.4f} | "
                     f"{summary['mean_abs_corr'][p]:.4f} | {summary['cutoffs'][p]:.2f} |")
    lines += ["", f"Sum of mean |corr|: **{summary['sum_mean_abs_corr']:.4f}**. "
                  f"Passed: **{summary['passed']} / {summary['cases']}** ({100 * summary['passed_ratio']:.1f}%)"
                  + (f"; {summary['degenerate']} degenerate cases (constant scores) failed." if summary["degenerate"] else "."),
              f"Mean consistency (std of the grouping scores over a case's edits): {summary['mean_consistency']:.4f}"
              + (f"; mean spread of the true identity traits: {summary['mean_identity_spread']:.4f}."
                 if "mean_identity_spread" in summary else "."),
              "", "## Per group", "", *group_table(vectors, summary), "",
              "![passes per group](passes_per_group.png)", "",
              "## Correlations", "", "![correlation histograms](correlations.png)", "",
              f"## Edits of the best cases ({', '.join(map(str, shown))})", "",
              "Each row is one test face; columns move one property along its group's direction, "
              "the other two weights at 0.", "", "![edits](edits.png)", "",
              "## Configuration", "", "```json",
              json.dumps({"test": test_config, "fit": meta.get("fit", {})}, indent=2, sort_keys=True, default=str),
              "```", ""]
    (run / REPORT_FILE).write_text("\n".join(lines))
    return run / REPORT_FILE


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="run directory with cases.parquet and summary.json")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: built-in synthetic model)")
    args = p.parse_args(argv)
    path = write_report(args.run, resolve_bundle(args.bundle))
    print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
