"""RUN/grid.md: the seeds' two grid tables (passes by n and ratio; everything by ratio at
the largest n) and two plots per latent space, for any edited properties.

One name per quantity, in the grid table and here: `mean_abs_corr_<p>` ("mean abs corr")
is the mean of |corr|, `mean_corr_<p>` ("mean corr") the signed mean; grid tables written
before the two were told apart held the mean of |corr| under `mean_corr_<p>`, and are
refused rather than shown under the wrong name."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from compute.plots import fig_text, md_text, pyplot
from compute.storage import Place, as_place
from vectors.errors import InputError


def check_grid_columns(table: pa.Table, properties) -> None:
    """A grid table must name its quantities as this version does: one written before
    `mean_abs_corr_<p>` existed holds the mean of |corr| under `mean_corr_<p>`."""
    missing = [f"mean_abs_corr_{p}" for p in properties if f"mean_abs_corr_{p}" not in table.column_names]
    if missing:
        raise InputError(f"the grid table has no column {missing[0]} (it was written by an older version, whose "
                         f"mean_corr_<property> was the mean of |corr|); run jobs.grid again on the same run: "
                         f"its finished cells are reused")


def write_grid_md(table: pa.Table, run: Place | Path, properties) -> Place:
    run = as_place(run)
    check_grid_columns(table, properties)
    plt = pyplot()
    rows = table.to_pylist()
    lines = ["# vectorfind grid", ""]
    sections = sorted({(r["space"], r.get("estimator") or "svm") for r in rows})
    if len({e for _, e in sections}) > 1:
        lines += estimator_table(rows, properties)
    for space, estimator in sections:
        mine = [r for r in rows if r["space"] == space and (r.get("estimator") or "svm") == estimator]
        if estimator != "svm":
            space = f"{space}, estimator {estimator}"
        tag = space.replace(", estimator ", "_").replace(":", "")
        ns, ratios = sorted({r["n"] for r in mine}), sorted({r["ratio"] for r in mine})
        cell = {(r["n"], r["ratio"]): r for r in mine}
        lines += [f"## Space {space}: passed cases (of {mine[0]['cases']}) and sum of mean |corr| by n and ratio", "",
                  "| n \\ ratio | " + " | ".join(f"{r:g}" for r in ratios) + " |",
                  "|---|" + "---|" * len(ratios)]
        for n in ns:
            lines.append(f"| {n:,} | " + " | ".join(
                f"{cell[(n, r)]['passed']} ({cell[(n, r)]['sum_mean_abs_corr']:.3f})" for r in ratios) + " |")
        top = ns[-1]
        lines += ["", f"## Space {space}: by ratio at n = {top:,}", "",
                  "| ratio | " + " | ".join(f"SVM acc {md_text(p)}" for p in properties) + " | "
                  + " | ".join(f"stability {md_text(p)}" for p in properties) + " | "
                  + " | ".join(f"mean abs corr {md_text(p)}" for p in properties) + " | sum | passed |",
                  "|---|" + "---|" * (3 * len(properties) + 2)]
        for r in ratios:
            c = cell[(top, r)]
            lines.append(f"| {r:g} | " + " | ".join(_fmt(c[f'svm_acc_{p}']) for p in properties) + " | "
                         + " | ".join(_fmt(c.get(f'stability_{p}')) for p in properties) + " | "
                         + " | ".join(f"{c[f'mean_abs_corr_{p}']:.4f}" for p in properties)
                         + f" | {c['sum_mean_abs_corr']:.4f} | {c['passed']} |")
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for n in ns:
            axes[0].plot(ratios, [cell[(n, r)]["sum_mean_abs_corr"] for r in ratios], marker="o", label=f"n={n:,}")
            axes[1].plot(ratios, [cell[(n, r)]["passed"] for r in ratios], marker="o", label=f"n={n:,}")
        axes[0].set_ylabel("sum of mean |corr|")
        axes[1].set_ylabel("passed cases")
        for ax in axes:
            ax.set_xlabel("ratio")
            ax.legend(fontsize=7)
        fig.tight_layout()
        with (run / f"grid_{tag}_sum_and_passed.png").open_write() as f:
            fig.savefig(f, format="png", dpi=90)
        plt.close(fig)
        fig, axes = plt.subplots(1, len(properties), figsize=(4 * len(properties), 3.3), squeeze=False)
        for ax, p in zip(axes[0], properties):
            for n in ns:
                ax.plot(ratios, [cell[(n, r)][f"mean_abs_corr_{p}"] for r in ratios], marker="o", label=f"n={n:,}")
            ax.set_title(f"mean |corr| {fig_text(p)}")
            ax.set_xlabel("ratio")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        with (run / f"grid_{tag}_per_property.png").open_write() as f:
            fig.savefig(f, format="png", dpi=90)
        plt.close(fig)
        lines += ["", f"![sum and passed](grid_{tag}_sum_and_passed.png)", "",
                  f"![per property](grid_{tag}_per_property.png)", ""]
    lines += grid_notes(rows, properties)
    path = run / "grid.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cell_name(r: dict) -> str:
    return md_text(f"{r['space']} n={r['n']:,} ratio {r['ratio']:g} {r.get('estimator') or 'svm'}")


def grid_notes(rows: list[dict], properties) -> list[str]:
    """What the tables' means hide: cells with fits that did not converge, and cells with cases
    whose corr is negative (the edit moved the score the wrong way; under the seeds' |corr|
    rule such a case can pass)."""
    lines = []
    unconverged = [r for r in rows if r.get("fits_not_converged")]
    if unconverged:
        lines += ["## Fits that did not converge", "",
                  "; ".join(f"{_cell_name(r)}: {r['fits_not_converged']}" for r in unconverged)
                  + " (their cell's vectors.parquet marks which: `converged` false).", ""]
    negative = [(r, [(p, r.get(f"negative_corr_{p}")) for p in properties if r.get(f"negative_corr_{p}")])
                for r in rows]
    negative = [(r, found) for r, found in negative if found]
    if negative:
        lines += ["## Cases with a negative correlation", "",
                  "Cases (of each cell's test cases) whose edit moved the score the wrong way: "
                  + "; ".join(f"{_cell_name(r)}: " + ", ".join(f"{md_text(p)} {n}" for p, n in found)
                              for r, found in negative) + ".", ""]
    return lines


def estimator_table(rows: list[dict], properties) -> list[str]:
    """The estimators side by side, one row per (space, n, ratio, estimator), all on the same cases."""
    truth = any(r.get("identity_spread") is not None for r in rows)
    lines = ["## Estimators side by side (same samples, same test cases)", "",
             "| space | n | ratio | estimator | " + " | ".join(f"mean abs corr {md_text(p)}" for p in properties)
             + " | passed | consistency | " + " | ".join(f"stability {md_text(p)}" for p in properties)
             + (" | identity spread" if truth else "") + " | fit s |",
             "|---|---|---|---|" + "---|" * (2 * len(properties) + 3 + truth)]
    for r in sorted(rows, key=lambda r: (r["space"], r["n"], r["ratio"], r.get("estimator") or "svm")):
        lines.append(f"| {r['space']} | {r['n']:,} | {r['ratio']:g} | {r.get('estimator') or 'svm'} | "
                     + " | ".join(f"{r[f'mean_abs_corr_{p}']:.4f}" for p in properties)
                     + f" | {r['passed']} | {r['consistency']:.4f} | "
                     + " | ".join(_fmt(r.get(f'stability_{p}')) for p in properties)
                     + (f" | {_fmt(r.get('identity_spread'))}" if truth else "")
                     + f" | {r.get('fit_seconds') or 0:.1f} |")
    return lines + [""]


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
