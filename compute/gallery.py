"""RUN/gallery.html: a static page to pick faces from the passed test cases.

One row per passed case (the best `top` by sum of |corr|): an edit strip per edited
property (the face moved along that property over its schedule, the other weights at 0,
drawn through the bundle's graphs like the report's grid), its id, group, correlations
(a negative one flagged: the edit moves that score the wrong way) and consistency. The
column heads stay in view while scrolling and sort on a click; a legend says what the
group letters and columns mean. The ticked cases download as one file, picks.csv
(compute.picks), which jobs.render reads: one click, one download, so a browser's block
on "multiple automatic downloads" never applies. Everything is inline (CSS, JS, PNG
strips as data URIs): the page opens from disk and fetches nothing.

Each case's picks.csv row is written here (the exact float32 codes) and the download
copies the ticked rows verbatim, so a pick reads back bit-exact.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from compute.picks import PICKS_FILE, picks_lines
from compute.plots import to_rgb
from compute.runlock import holding_run_lock
from compute.runs import CASES_FILE, VECTORS_FILE, recorded_path
from compute.sessions import CALL_PIXELS, make_session, num_ws, run_single, synthesize
from compute.storage import Place, as_place
from compute.tables import read_metadata, read_table, vector_matrix
from compute.vectors_table import VectorsError, read_vectors
from vectors.edits import apply_edits, case_directions, direction_matrices, layer_codes
from vectors.errors import InputError
from vectors.method import Method

GALLERY_FILE = "gallery.html"
GAP = 2  # white pixels between the frames of a strip
WRONG_WAY = "\u26a0"  # marks a negative correlation


def _png(pixels: np.ndarray) -> str:
    """(H, W, 3) uint8 pixels as a PNG data URI."""
    from PIL import Image  # Pillow comes with matplotlib

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def edit_strips(bundle, latents: np.ndarray, groups, matrices: dict, method: Method) -> list[list[str]]:
    """For each case, one PNG data URI per property: its schedule's frames side by side."""
    columns = [(i, v) for i, p in enumerate(method.properties) for v in p.schedule]
    weights = np.zeros((len(columns), len(method.properties)), np.float32)
    for row, (i, v) in enumerate(columns):
        weights[row, i] = v
    mapping, synthesis = (make_session(bundle.graph_bytes(s), threads=2) for s in ("mapping", "synthesis"))
    per_call = max(1, CALL_PIXELS["cpu"] // (len(columns) * bundle.resolution ** 2))
    strips = []
    for start in range(0, len(latents), per_call):
        chunk, chunk_groups = latents[start:start + per_call], groups[start:start + per_call]
        edited = apply_edits(chunk, case_directions(matrices, chunk_groups), weights)   # (b, E, D)
        if method.layers is not None:
            edited = layer_codes(chunk, edited, method.layers, num_ws(synthesis))       # (b, E, L, D)
        edited = edited.reshape(-1, *edited.shape[2:])
        images = synthesize(synthesis, run_single(mapping, edited) if method.latent == "z" else edited)
        images = images.reshape(len(chunk), len(columns), *images.shape[1:])           # (b, E, 3, H, W)
        for case in images:
            row, first = [], 0
            for p in method.properties:
                frames = [to_rgb(img) for img in case[first:first + len(p.schedule)]]
                first += len(p.schedule)
                gap = np.full((frames[0].shape[0], GAP, 3), 255, np.uint8)
                row.append(_png(np.concatenate([x for f in frames for x in (f, gap)][:-1], axis=1)))
            strips.append(row)
    return strips


def _load(run: Place, bundle):
    """The cases table, the method, the direction matrices and the grouping medians the run's test used."""
    if not run.is_dir():
        raise InputError(f"no run directory {run}")
    if not (run / CASES_FILE).is_file():
        raise VectorsError(f"{run} has no {CASES_FILE}: run the generation test first (python -m jobs.test)")
    try:
        cases = read_table(run / CASES_FILE)
        test = read_metadata(run / CASES_FILE).get("test", {})
    except Exception as exc:  # truncated or edited files: pyarrow and json raise several types
        raise VectorsError(f"the test results in {run} are damaged ({str(exc).splitlines()[0]}); "
                           f"run the generation test again (python -m jobs.test)") from exc
    recorded = test.get("bundle_manifest_sha256")
    if recorded and recorded != bundle.manifest_sha256:
        raise InputError(f"{run} was tested on the bundle with manifest sha256 {recorded[:16]}, not "
                         f"{bundle.path} ({bundle.manifest_sha256[:16]}); pass the run's own bundle (--bundle DIR)")
    method = Method.from_dict(test["method"]) if "method" in test else Method()
    vectors_path = recorded_path(test["vectors"], run) if "vectors" in test else run / VECTORS_FILE
    _, directions, _ = read_vectors(vectors_path)
    medians = test.get("median_values") if isinstance(test.get("median_values"), dict) else {}
    return cases, method, direction_matrices(directions, method.property_names), medians


def _weights(schedule) -> str:
    return " ".join("0" if v == 0 else f"{v:+g}" for v in schedule)


def count_passed(run: Place | Path) -> tuple[int, int]:
    """(passed, tested) cases of RUN's generation test."""
    passed = read_table(as_place(run) / CASES_FILE, columns=["passed"])["passed"].to_numpy()
    return int(passed.sum()), len(passed)


def _number(value: float, digits: int = 4) -> tuple[str, str]:
    """(shown text, sort key) of a figure; NaN shows as '-' and sorts last."""
    return ("-", "") if value is None or value != value else (f"{value:.{digits}f}", repr(float(value)))


def _rows(shown, strips: list[list[str]], method: Method) -> list[str]:
    """One <tr> per shown case; each sortable cell carries its sort key in data-value."""
    rows = []
    for i, case_id in enumerate(shown["case_id"].to_pylist()):
        group = html.escape(shown["group"][i].as_py())
        cells = [f'<td><input type="checkbox" class="pick" value="{case_id}" aria-label="pick case {case_id}"></td>',
                 f'<td class="num" data-value="{case_id}">{case_id}</td>', f'<td data-value="{group}">{group}</td>']
        for p in method.property_names:
            corr = shown[f"corr_{p}"][i].as_py()
            text, value = _number(corr)
            if corr is not None and corr < 0:  # passed (the seeds' |corr| rule), but the edit moves the score the wrong way
                cells.append(f'<td class="num neg" data-value="{value}" title="negative: the edit moves '
                             f'{html.escape(p)} the wrong way">{WRONG_WAY} {text}</td>')
            else:
                cells.append(f'<td class="num" data-value="{value}">{text}</td>')
        for key in ("sum_abs_corr", "consistency"):
            text, value = _number(shown[key][i].as_py())
            cells.append(f'<td class="num" data-value="{value}">{text}</td>')
        cells += [f'<td class="strip"><img src="{uri}" alt="case {case_id}, {html.escape(p.name)} edits" '
                  f'title="{html.escape(p.name)}: {_weights(p.schedule)}"></td>'
                  for p, uri in zip(method.properties, strips[i])]
        rows.append(f'<tr data-case="{case_id}">{"".join(cells)}</tr>')
    return rows


def _header(method: Method) -> str:
    head = ['<th>pick</th>', '<th class="sortable" data-kind="num">case</th>',
            '<th class="sortable" data-kind="text">group</th>']
    head += [f'<th class="sortable" data-kind="num">corr<br>{html.escape(p)}</th>' for p in method.property_names]
    head += ['<th class="sortable sorted-desc" data-kind="num">sum<br>|corr|</th>',
             '<th class="sortable" data-kind="num">consistency<br><small>lower is better</small></th>']
    head += [f'<th>{html.escape(p.name)} edits<br><small>{_weights(p.schedule)}</small></th>'
             for p in method.properties]
    return "".join(head)


def _median(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "not recorded"


def _legend(method: Method, medians: dict) -> str:
    """What the group letters, the correlations and consistency mean, as <li> items."""
    if method.group_by:
        letters = "; ".join(f"letter {k + 1}: {html.escape(g)} (median {_median(medians.get(g))})"
                            for k, g in enumerate(method.group_by))
        group = (f"<b>group</b>: one letter per grouping score, in this order: {letters}. "
                 f"<b>h</b>: the face's score is at or above that median, <b>l</b>: below it.")
    else:
        group = "<b>group</b>: all (the method groups the faces by no score)."
    return "".join(f"<li>{item}</li>" for item in (
        group,
        ("<b>corr</b>: correlation of the property's score with the edit weight over the case's edits; a case "
         + ("passes on corr itself (the method's signed rule)." if method.pass_rule == "signed" else
            "passes on |corr| (the seeds' rule; the method setting pass_rule = \"signed\" passes on corr).")),
        (f'<span class="neg">{WRONG_WAY}</span> a negative correlation: the edit moves that score the wrong way'
         + (" (only a property whose cutoff allows it can pass so)." if method.pass_rule == "signed" else
            " (the case passes on |corr| all the same).")),
        ("<b>consistency</b>: mean spread of the grouping scores over the case's edits; lower is better "
         "(the rest of the face stays put).")))


@holding_run_lock("run", create=False)
def write_gallery(run: Place | Path, bundle, top: int = 100, out: Place | Path | None = None) -> Place:
    """Write the picking page for RUN's passed cases (the best `top` by sum of |corr|) to
    `out` (default RUN/gallery.html); returns its path. `bundle` must be the run's own."""
    run = as_place(run)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError(f"top must be a whole number >= 1, got {top!r}")
    cases, method, matrices, medians = _load(run, bundle)
    passed = cases.filter(cases["passed"])
    order = np.argsort(-np.nan_to_num(passed["sum_abs_corr"].to_numpy(), nan=-1), kind="stable")[:top]
    shown = passed.take(order)
    groups = shown["group"].to_pylist()
    latents = vector_matrix(shown[method.latent]) if shown.num_rows else np.zeros((0, 0), np.float32)
    strips = edit_strips(bundle, latents, groups, matrices, method) if shown.num_rows else []
    header, lines = picks_lines(method.latent, bundle.manifest_sha256, shown["case_id"].to_pylist(), groups, latents)
    data = {"file": PICKS_FILE, "header": header, "rows": {str(c): line for c, line in lines.items()}}
    cutoffs = ", ".join(f"{html.escape(p.name)} {p.cutoff:g}" for p in method.properties)
    if method.max_spread is not None:
        cutoffs += f", consistency <= {method.max_spread:g}"
    wrong_way = sum(any((shown[f"corr_{p}"][i].as_py() or 0) < 0 for p in method.property_names)
                    for i in range(shown.num_rows))
    rule = "corr" if method.pass_rule == "signed" else "|corr|"
    intro = (f"<b>{passed.num_rows}</b> of {cases.num_rows} test cases passed ({rule} cutoffs: {cutoffs}); "
             + (f"showing the best {shown.num_rows} by sum of |corr|" if shown.num_rows else "none to show")
             + (f", {wrong_way} of them with a negative correlation ({WRONG_WAY})." if wrong_way else "."))
    page = PAGE.format(
        title=html.escape(f"vectorfind gallery: {run.name}"), intro=intro, legend=_legend(method, medians),
        about=html.escape(f"space {method.space}, model {bundle.manifest.get('model', '?')}, bundle "
                          f"{bundle.manifest_sha256[:16]}, run {run.key()}"),
        picks=PICKS_FILE, code=method.latent, head=_header(method), rows="\n".join(_rows(shown, strips, method)),
        data=json.dumps(data).replace("</", "<\\/"), script=SCRIPT)
    out = as_place(out) if out is not None else run / GALLERY_FILE
    out.write_text(page)
    return out


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 0 1em 1em; color: #222; }}
h1 {{ font-size: 1.3em; margin: .6em 0 .2em; }}
.about {{ color: #666; font-size: .85em; }}
.legend {{ margin: .4em 0; padding-left: 1.2em; font-size: .9em; color: #333; }}
.bar {{ position: sticky; top: 0; background: #fff; padding: .4em 0; z-index: 3; border-bottom: 1px solid #ccc; }}
table {{ border-collapse: separate; border-spacing: 0; margin-top: .3em; }}
th, td {{ padding: 3px 7px; border-bottom: 1px solid #e4e4e4; vertical-align: middle; }}
thead th {{ position: sticky; top: var(--bar-height, 0px); z-index: 2; background: #f3f3f3; text-align: left;
  white-space: nowrap; border-bottom: 1px solid #bbb; }}
th small {{ font-weight: normal; color: #666; }}
th.sortable {{ cursor: pointer; }}
th.sortable:hover {{ background: #e4e4ff; }}
th.sorted-asc::after {{ content: " \\25B2"; }}
th.sorted-desc::after {{ content: " \\25BC"; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
.neg {{ color: #b00020; font-weight: bold; }}
td.strip {{ padding: 2px 6px; }}
td.strip img {{ height: 64px; display: block; transform-origin: left center; transition: transform .1s; }}
td.strip img:hover {{ transform: scale(2); position: relative; z-index: 1; box-shadow: 0 0 8px #0008; }}
tr.ticked {{ background: #fff6d6; }}
button {{ font-size: 1em; padding: .3em .9em; }}
</style></head>
<body>
<header><h1>{title}</h1>
<div>{intro} Click a column header to sort; hover a strip to enlarge it.</div>
<div class="about">{about}</div>
<ul class="legend" id="legend">{legend}</ul></header>
<div class="bar" id="bar"><button id="download">download picks</button> <span id="count">0 ticked</span>
(saves the ticked cases as one file, {picks}: case id, group, model bundle and {code} code, for jobs.render)</div>
<table id="cases"><thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody></table>
<script id="gallery-data" type="application/json">{data}</script>
<script>{script}</script>
</body></html>
"""

SCRIPT = """
"use strict";
const data = JSON.parse(document.getElementById("gallery-data").textContent);
const tbody = document.querySelector("#cases tbody");
const headers = Array.from(document.querySelectorAll("#cases thead th"));

// The column heads stick just below the download bar, whatever height the bar wraps to.
const bar = document.getElementById("bar");
function placeHeads() { document.documentElement.style.setProperty("--bar-height", bar.offsetHeight + "px"); }
placeHeads();
window.addEventListener("resize", placeHeads);

function sortBy(th) {
  const col = headers.indexOf(th), numeric = th.dataset.kind === "num";
  const dir = th.classList.contains("sorted-asc") ? -1 : 1;
  headers.forEach(h => h.classList.remove("sorted-asc", "sorted-desc"));
  th.classList.add(dir > 0 ? "sorted-asc" : "sorted-desc");
  const key = tr => tr.children[col].dataset.value;
  const rows = Array.from(tbody.rows);
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");   // no value: last either way
    const c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
    return dir * c || Number(a.dataset.case) - Number(b.dataset.case);
  });
  rows.forEach(r => tbody.appendChild(r));
}
headers.filter(h => h.classList.contains("sortable")).forEach(h => h.addEventListener("click", () => sortBy(h)));

function ticked() {
  return Array.from(document.querySelectorAll("input.pick:checked"), b => b.value)
    .sort((a, b) => Number(a) - Number(b));
}
tbody.addEventListener("change", e => {
  e.target.closest("tr").classList.toggle("ticked", e.target.checked);
  document.getElementById("count").textContent = ticked().length + " ticked";
});

// One click, one download: a second file from the same click is what a browser blocks
// as "multiple automatic downloads".
document.getElementById("download").addEventListener("click", () => {
  const ids = ticked();
  if (!ids.length) { alert("Tick at least one case first."); return; }
  const text = [data.header].concat(ids.map(id => data.rows[id])).join("\\n") + "\\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], {type: "text/csv"}));
  a.download = data.file;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60000);
});
"""
