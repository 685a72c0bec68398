"""RUN/report.md with PNG figures: the results table, a per-group table, correlation
histograms, passes per group, an image grid of the best cases' edits, and the run's
configuration. Works for any edited properties and grouping scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from compute.files import atomic_file, write_text_atomic
from compute.plots import fig_text, md_code_fence, md_text, pyplot, to_rgb
from compute.runlock import holding_run_lock
from compute.runs import CASES_FILE, REPORT_FILE, SUMMARY_FILE, VECTORS_FILE, recorded_path
from compute.sessions import make_session, num_ws, run_single, synthesize
from compute.tables import read_metadata, vector_matrix
from compute.vectors_table import VectorsError, read_vectors
from vectors.edits import apply_edits, case_directions, direction_matrices, layer_codes
from vectors.method import Method
from vectors.summary import mean_by_property

GRID_CASES = 3


def correlation_histograms(cases, properties, out: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(properties), figsize=(3.7 * len(properties), 3.2), squeeze=False)
    for ax, prop in zip(axes[0], properties):
        values = cases[f"corr_{prop}"].to_numpy()
        ax.hist(values[np.isfinite(values)], bins=np.linspace(-1, 1, 41), color="#4477aa")
        ax.set_title(f"corr {fig_text(prop)} (mean {np.nanmean(values):.3f})")
        ax.set_xlabel("Pearson corr, intended vs measured")
    axes[0][0].set_ylabel("cases")
    fig.tight_layout()
    with atomic_file(out, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def passes_per_group(summary: dict, group_names, group_by, out: Path) -> None:
    plt = pyplot()
    names = list(group_names)
    per = summary["per_group"]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(3.5, 0.8 * len(names) + 1), 3.2))
    ax.bar(x - 0.2, [per[g]["cases"] for g in names], 0.4, label="cases", color="#bbbbbb")
    ax.bar(x + 0.2, [per[g]["passed"] for g in names], 0.4, label="passed", color="#228833")
    ax.set_xticks(x, [fig_text(g) for g in names])
    ax.set_xlabel(fig_text(f"group ({', '.join(group_by) or 'no grouping'}: h/l)"))
    ax.legend()
    fig.tight_layout()
    with atomic_file(out, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def edit_grid(bundle, cases, matrices: dict, method: Method, out: Path) -> list[int]:
    """Rows: the best cases (passed first, by sum of |corr|); columns: each property over its
    schedule, the other properties' weights at 0."""
    plt = pyplot()
    order = np.lexsort((-np.nan_to_num(cases["sum_abs_corr"].to_numpy(), nan=-1), ~cases["passed"].to_numpy()))
    chosen = order[:GRID_CASES]
    columns = [(i, p.name, v) for i, p in enumerate(method.properties) for v in p.schedule]
    weights = np.zeros((len(columns), len(method.properties)), np.float32)
    for row, (i, _, v) in enumerate(columns):
        weights[row, i] = v
    mapping, synthesis = (make_session(bundle.graph_bytes(s), threads=2) for s in ("mapping", "synthesis"))
    latents = vector_matrix(cases[method.latent])[chosen]
    groups = np.array(cases["group"].to_pylist())[chosen]
    edited = apply_edits(latents, case_directions(matrices, groups), weights)
    if method.layers is not None:
        edited = layer_codes(latents, edited, method.layers, num_ws(synthesis))
    edited = edited.reshape(-1, *edited.shape[2:])
    images = synthesize(synthesis, run_single(mapping, edited) if method.latent == "z" else edited)
    images = images.reshape(len(chosen), len(columns), *images.shape[1:])
    fig, axes = plt.subplots(len(chosen), len(columns), figsize=(1.3 * len(columns), 1.55 * len(chosen)),
                             squeeze=False)
    for row, i in enumerate(chosen):
        for col, (_, prop, weight) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(to_rgb(images[row, col]))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{fig_text(prop)} {weight:+g}", fontsize=7)
        axes[row, 0].set_ylabel(f"case {int(cases['case_id'][i])}\n{fig_text(groups[row])}", fontsize=7)
    fig.tight_layout()
    with atomic_file(out, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    return [int(cases["case_id"][i]) for i in chosen]


def _fmt(value, digits: int = 4) -> str:
    """A figure, or '-' where there is none (imported vectors carry no fit statistics)."""
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def group_table(vectors, summary: dict, props, group_names) -> list[str]:
    acc = {(g, p): a for g, p, a in zip(vectors["group"].to_pylist(), vectors["property"].to_pylist(),
                                        vectors["val_accuracy"].to_pylist())}
    size = dict(zip(vectors["group"].to_pylist(), vectors["group_size"].to_pylist()))
    lines = ["| group | samples | " + " | ".join(f"SVM acc {md_text(p)}" for p in props) + " | test cases | passed |",
             "|---|---|" + "---|" * len(props) + "---|---|"]
    for g in group_names:
        per = summary["per_group"][g]
        lines.append(f"| {md_text(g)} | {size.get(g, '-')} | " + " | ".join(_fmt(acc.get((g, p)), 3) for p in props)
                     + f" | {per['cases']} | {per['passed']} |")
    return lines


def report_heading(run_name: str, space: str, latent: str, model: str, summary: dict, group_by,
                   group_names) -> list[str]:
    """The title and the run's one-line description; every name Markdown-escaped (md_text)."""
    groups = f"{len(group_names)} groups by {md_text(', '.join(group_by))}" if group_by else "one global group"
    return [f"# vectorfind report: {md_text(run_name)}", "",
            f"Latent space **{md_text(space)}** ({'v6' if latent == 'z' else 'v7'}), model {md_text(model)}, "
            f"{summary.get('n_samples', '?')} samples, ratio {summary.get('ratio')}, {groups}, "
            f"{summary['cases']} test cases x {summary['edits_per_case']} edits.", ""]


def results_table(props, acc: dict, stability: dict, summary: dict) -> list[str]:
    """One row per edited property; names escaped for a table cell (md_text)."""
    lines = ["| property | SVM val accuracy | stability | mean corr | mean abs corr | cutoff |",
             "|---|---|---|---|---|---|"]
    for p in props:
        lines.append(f"| {md_text(p)} | {_fmt(acc.get(p))} | {_fmt(stability[p])} | {summary['mean_corr'][p]:.4f} | "
                     f"{summary['mean_abs_corr'][p]:.4f} | {summary['cutoffs'][p]:.2f} |")
    return lines


def _estimator_note(fit: dict) -> list[str]:
    """How the directions were fitted and what their stability means (nothing for older or imported vectors)."""
    if not fit.get("estimator"):
        return []
    splits = fit.get("stability_splits") or 0
    return [f"Directions fitted with the {md_text(fit['estimator'])} estimator; "
            + (f"stability is the mean cosine between directions fitted on {splits} resampled splits "
               f"(1: the same direction whatever rows are held out)." if splits > 1 else "stability not measured.")]


@holding_run_lock("run", create=False)
def write_report(run: Path, bundle) -> Path:
    """Write RUN/report.md from the test's stored results and the vectors it tested."""
    run = Path(run)
    for needed in (CASES_FILE, SUMMARY_FILE):
        if not (run / needed).is_file():
            raise VectorsError(f"{run} has no {needed}: run the generation test first (python -m jobs.test)")
    try:
        cases = pq.read_table(run / CASES_FILE)
        summary = json.loads((run / SUMMARY_FILE).read_text())
        test = read_metadata(run / CASES_FILE).get("test", {})
    except Exception as exc:  # truncated or edited files: pyarrow and json raise several types
        raise VectorsError(f"the test results in {run} are damaged ({str(exc).splitlines()[0]}); "
                           f"run the generation test again (python -m jobs.test)") from exc
    method = Method.from_dict(test["method"]) if "method" in test else Method()
    vectors_path = recorded_path(test["vectors"], run) if "vectors" in test else run / VECTORS_FILE
    vectors, directions, meta = read_vectors(vectors_path)
    matrices = direction_matrices(directions, method.property_names)
    correlation_histograms(cases, method.property_names, run / "correlations.png")
    passes_per_group(summary, method.group_names, method.group_by, run / "passes_per_group.png")
    shown = edit_grid(bundle, cases, matrices, method, run / "edits.png")
    acc = summary.get("svm_val_accuracy") or {}
    config = json.dumps({"test": test, "fit": meta.get("fit", {})}, indent=2, sort_keys=True, default=str)
    fence = md_code_fence(config)  # a name with backticks cannot close the block
    stability = mean_by_property(vectors["property"].to_pylist(), vectors["stability"].to_pylist(),
                                 method.property_names)
    lines = [*report_heading(run.name, method.space, method.latent, bundle.manifest.get("model", "?"), summary,
                             method.group_by, method.group_names),
             "## Results", "", *results_table(method.property_names, acc, stability, summary)]
    lines += ["", f"Sum of mean |corr|: **{summary['sum_mean_abs_corr']:.4f}**. "
                  f"Passed: **{summary['passed']} / {summary['cases']}** ({100 * summary['passed_ratio']:.1f}%)"
                  + (f"; {summary['degenerate']} degenerate cases (constant scores) failed."
                     if summary["degenerate"] else "."),
              *_estimator_note(meta.get("fit", {})),
              f"Mean consistency (std of the grouping scores over a case's edits): "
              f"{_fmt(summary['mean_consistency'])}"
              + (f"; mean spread of the true identity traits: {summary['mean_identity_spread']:.4f}."
                 if "mean_identity_spread" in summary else "."),
              "", "## Per group", "", *group_table(vectors, summary, method.property_names, method.group_names), "",
              "![passes per group](passes_per_group.png)", "",
              "## Correlations", "", "![correlation histograms](correlations.png)", "",
              f"## Edits of the best cases ({', '.join(map(str, shown))})", "",
              "Each row is one test face; columns move one property along its group's direction, "
              "the other weights at 0.", "", "![edits](edits.png)", "",
              "## Configuration", "", fence + "json", config, fence, ""]
    write_text_atomic(run / REPORT_FILE, "\n".join(lines))
    return run / REPORT_FILE
