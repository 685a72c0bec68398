"""RUN/report.md with PNG figures: the results table, the fits that did not converge, a
per-group table with each direction's spread of projected codes, the cases whose
correlation is negative, correlation histograms, passes per group, an image grid of the
best cases' edits, and the run's configuration. Works for any edited properties and
grouping scores.

Names, as in summary.json and the grid: "mean corr" is the signed mean of the per-case
correlations, "mean abs corr" the mean of |corr|."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from compute.code_spread import CodeSpread, code_spread
from compute.plots import fig_text, md_code_fence, md_text, pyplot, to_rgb
from compute.runlock import holding_run_lock
from compute.runs import CASES_FILE, REPORT_FILE, SAMPLES_FILE, SUMMARY_FILE, VECTORS_FILE, recorded_path
from compute.sessions import make_session, num_ws, run_single, synthesize
from compute.storage import Place, as_place
from compute.tables import read_metadata, read_table, vector_matrix
from compute.vectors_table import VectorsError, read_vectors
from vectors.edits import apply_edits, case_directions, direction_matrices, layer_codes
from vectors.method import Method
from vectors.summary import mean_by_property

GRID_CASES = 3
NEGATIVE_LISTED = 20  # cases with a negative correlation listed by id (all are counted)


def correlation_histograms(cases, properties, out: Place | Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(properties), figsize=(3.7 * len(properties), 3.2), squeeze=False)
    for ax, prop in zip(axes[0], properties):
        values = cases[f"corr_{prop}"].to_numpy()
        ax.hist(values[np.isfinite(values)], bins=np.linspace(-1, 1, 41), color="#4477aa")
        ax.set_title(f"corr {fig_text(prop)} (mean {np.nanmean(values):.3f})")
        ax.set_xlabel("Pearson corr, intended vs measured")
    axes[0][0].set_ylabel("cases")
    fig.tight_layout()
    with as_place(out).open_write() as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def passes_per_group(summary: dict, group_names, group_by, out: Place | Path) -> None:
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
    with as_place(out).open_write() as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def edit_grid(bundle, cases, matrices: dict, method: Method, out: Place | Path) -> list[int]:
    """Rows: the best cases (passed first, by sum of |corr|); columns: each property over its
    schedule, the other properties' weights at 0. Returns the rows of `cases` shown."""
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
    with as_place(out).open_write() as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    return [int(i) for i in chosen]


def _fmt(value, digits: int = 4) -> str:
    """A figure, or '-' where there is none (imported vectors carry no fit statistics)."""
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def group_table(vectors, summary: dict, props, group_names, spread: dict | None = None) -> list[str]:
    """Per group: samples, SVM accuracy per property, test cases and passes; with `spread`
    ({(group, property): std of code . n}), each direction's spread of projected codes."""
    acc = {(g, p): a for g, p, a in zip(vectors["group"].to_pylist(), vectors["property"].to_pylist(),
                                        vectors["val_accuracy"].to_pylist())}
    size = dict(zip(vectors["group"].to_pylist(), vectors["group_size"].to_pylist()))
    spread = spread or {}
    stds = " | ".join(f"code std {md_text(p)}" for p in props) + " | " if spread else ""
    lines = ["| group | samples | " + " | ".join(f"SVM acc {md_text(p)}" for p in props) + f" | {stds}test cases | "
             "passed |", "|---|---|" + "---|" * (len(props) * (2 if spread else 1)) + "---|---|"]
    for g in group_names:
        per = summary["per_group"][g]
        cells = [_fmt(acc.get((g, p)), 3) for p in props] + ([_fmt(spread.get((g, p)), 3) for p in props]
                                                             if spread else [])
        lines.append(f"| {md_text(g)} | {size.get(g, '-')} | " + " | ".join(cells)
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


def results_table(props, acc: dict, stability: dict, summary: dict, negative: dict | None = None,
                  spread: dict | None = None, schedules: dict | None = None) -> list[str]:
    """One row per edited property; names escaped for a table cell (md_text). `negative`:
    {property: cases with corr < 0}; `spread`: {property: mean over groups of the std of
    code . n}, shown with the schedule's largest |weight| in those stds."""
    negative, spread, schedules = negative or {}, spread or {}, schedules or {}
    lines = [("| property | SVM val accuracy | stability | mean corr | mean abs corr | cases with corr < 0 | cutoff | "
              "code std along n | largest edit / code std |"), "|---|---|---|---|---|---|---|---|---|"]
    for p in props:
        reach = max(abs(w) for w in schedules[p]) / spread[p] if spread.get(p) and schedules.get(p) else None
        lines.append(f"| {md_text(p)} | {_fmt(acc.get(p))} | {_fmt(stability[p])} | {summary['mean_corr'][p]:.4f} | "
                     f"{summary['mean_abs_corr'][p]:.4f} | {negative.get(p, '-')} | {summary['cutoffs'][p]:.2f} | "
                     f"{_fmt(spread.get(p), 3)} | {_fmt(reach, 2)} |")
    return lines


def corr_cell(value) -> str:
    """A correlation for a table cell; a negative one (the edit moved the score the wrong way) in bold."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"**{value:.3f}**" if value < 0 else f"{value:.3f}"


def case_rows(cases, rows, props) -> list[str]:
    """A table of the cases at `rows`: id, group, each correlation (negative ones bold), sum of
    |corr|, passed."""
    lines = ["| case | group | " + " | ".join(f"corr {md_text(p)}" for p in props) + " | sum abs corr | passed |",
             "|---|---|" + "---|" * len(props) + "---|---|"]
    corr = {p: cases[f"corr_{p}"].to_pylist() for p in props}
    ids, groups, sums, passed = (cases[c].to_pylist() for c in ("case_id", "group", "sum_abs_corr", "passed"))
    for i in rows:
        lines.append(f"| {int(ids[i])} | {md_text(groups[i])} | " + " | ".join(corr_cell(corr[p][i]) for p in props)
                     + f" | {_fmt(sums[i], 3)} | {'yes' if passed[i] else 'no'} |")
    return lines


def negative_section(cases, props, pass_rule: str) -> tuple[dict, list[str]]:
    """({property: cases with corr < 0}, the report's section on them): counts per property,
    how many of them passed, and the first NEGATIVE_LISTED such cases (passed ones first)."""
    corr = {p: cases[f"corr_{p}"].to_numpy(zero_copy_only=False).astype(np.float64) for p in props}
    passed = cases["passed"].to_numpy(zero_copy_only=False).astype(bool)
    negative = {p: np.nan_to_num(corr[p], nan=0.0) < 0 for p in props}
    counts = {p: int(negative[p].sum()) for p in props}
    lines = ["## Negative correlations", ""]
    if not any(counts.values()):
        return counts, lines + ["No case has a negative correlation.", ""]
    rule = ("corr >= cutoff: a case with a negative correlation fails" if pass_rule == "signed" else
            "|corr| >= cutoff (the seeds'): a case whose edit moves a score consistently the wrong way passes; "
            'the method setting `pass_rule = "signed"` (`--pass-rule signed`; `jobs.recheck --pass-rule signed` '
            "on stored results) fails it")
    lines.append("Cases whose edit moved the score the wrong way (corr < 0), per property: " + ", ".join(
        f"{md_text(p)} {counts[p]} ({int((negative[p] & passed).sum())} passed)" for p in props)
        + f". Pass rule: {rule}.")
    any_negative = np.any(np.stack(list(negative.values())), axis=0)
    rows = [int(i) for mask in (any_negative & passed, any_negative & ~passed) for i in np.flatnonzero(mask)]
    shown = rows[:NEGATIVE_LISTED]
    which = f"The first {len(shown)} of {len(rows)}" if len(rows) > len(shown) else f"All {len(rows)}"
    lines += ["", f"{which} such cases, passed first; negative correlations in bold:", "",
              *case_rows(cases, shown, props), ""]
    return counts, lines


def convergence_lines(vectors) -> list[str]:
    """Which (group, property) fits did not converge, from the vectors table's `converged`."""
    converged = vectors["converged"].to_pylist()
    if all(c is None for c in converged):
        return ["Convergence of the fits: not recorded (imported vectors)."]
    failed = [f"{md_text(g)}/{md_text(p)}" for g, p, c in zip(vectors["group"].to_pylist(),
                                                            vectors["property"].to_pylist(), converged) if c is False]
    if not failed:
        return [f"All {len(converged)} fits converged."]
    return [(f"**{len(failed)} of {len(converged)} fits did not converge** (the solver stopped at its iteration "
             f"limit): {', '.join(failed)}. Their directions may be off; consider `--scale` or a larger `--max-iter`.")]


def spread_lines(spread: CodeSpread, latent: str) -> list[str]:
    if not spread.std:
        return [f"Spread of projected codes: not measured ({md_text(spread.note)})."]
    return [(f"Code std: the std of {latent} . n over the {spread.rows:,} samples of "
             f"{md_text(spread.source.name)}, per direction n. An edit of weight e moves a code along n by "
             f"e / (code std) of these stds (docs/method.md, choosing edit schedules).")]


def _estimator_note(fit: dict) -> list[str]:
    """How the directions were fitted and what their stability means (nothing for older or imported vectors)."""
    if not fit.get("estimator"):
        return []
    splits = fit.get("stability_splits") or 0
    return [f"Directions fitted with the {md_text(fit['estimator'])} estimator; "
            + (f"stability is the mean cosine between directions fitted on {splits} resampled splits "
               f"(1: the same direction whatever rows are held out)." if splits > 1 else "stability not measured.")]


@holding_run_lock("run", create=False)
def write_report(run: Place | Path, bundle) -> Place:
    """Write RUN/report.md from the test's stored results and the vectors it tested."""
    run = as_place(run)
    for needed in (CASES_FILE, SUMMARY_FILE):
        if not (run / needed).is_file():
            raise VectorsError(f"{run} has no {needed}: run the generation test first (python -m jobs.test)")
    try:
        cases = read_table(run / CASES_FILE)
        summary = json.loads((run / SUMMARY_FILE).read_text(limit=1 << 26))
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
    props = method.property_names
    stability = mean_by_property(vectors["property"].to_pylist(), vectors["stability"].to_pylist(), props)
    spread = code_spread([run / SAMPLES_FILE, vectors_path.parent / SAMPLES_FILE],
                         test.get("bundle_manifest_sha256") or bundle.manifest_sha256, method.latent, directions)
    mean_spread = {p: float(np.mean(v)) if v else None for p, v in
                   ((p, [s for (_, q), s in spread.std.items() if q == p and np.isfinite(s)]) for p in props)}
    negative, negative_lines = negative_section(cases, props, method.pass_rule)
    rule = "corr >= cutoff" if method.pass_rule == "signed" else "|corr| >= cutoff, the seeds' rule"
    lines = [*report_heading(run.name, method.space, method.latent, bundle.manifest.get("model", "?"), summary,
                             method.group_by, method.group_names),
             "## Results", "", *results_table(props, acc, stability, summary, negative, mean_spread,
                                              {p.name: p.schedule for p in method.properties})]
    lines += ["", f"Sum of mean |corr|: **{summary['sum_mean_abs_corr']:.4f}**. "
                  f"Passed ({rule}): **{summary['passed']} / {summary['cases']}** "
                  f"({100 * summary['passed_ratio']:.1f}%)"
                  + (f"; {summary['degenerate']} degenerate cases (constant scores) failed."
                     if summary["degenerate"] else "."),
              "Mean corr is the signed mean of the cases' correlations, mean abs corr the mean of |corr|.",
              *_estimator_note(meta.get("fit", {})), *convergence_lines(vectors),
              f"Mean consistency (std of the grouping scores over a case's edits): "
              f"{_fmt(summary['mean_consistency'])}"
              + (f"; mean spread of the true identity traits: {summary['mean_identity_spread']:.4f}."
                 if "mean_identity_spread" in summary else "."),
              "", "## Per group", "", *group_table(vectors, summary, props, method.group_names, spread.std), "",
              *spread_lines(spread, method.latent), "", "![passes per group](passes_per_group.png)", "",
              *negative_lines,
              "## Correlations", "", "![correlation histograms](correlations.png)", "",
              f"## Edits of the best cases ({', '.join(str(int(cases['case_id'][i].as_py())) for i in shown)})", "",
              "Each row is one test face; columns move one property along its group's direction, "
              "the other weights at 0.", "", "![edits](edits.png)", "", *case_rows(cases, shown, props), "",
              "## Configuration", "", fence + "json", config, fence, ""]
    (run / REPORT_FILE).write_text("\n".join(lines))
    return run / REPORT_FILE
