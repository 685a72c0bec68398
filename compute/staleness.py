"""Outputs a stage made stale: report.md and gallery.html drawn from results that were rewritten since.

report.md and gallery.html are static files drawn from a run's results: the test's
cases.parquet and summary.json and the vectors they tested. A job that rewrites those results
(jobs.fit, jobs.test, jobs.import_vectors, jobs.vectorfind) does its work inside
`watching_results(run, job)`, which holds the run's lock and fingerprints the results before
and after (sha256 of each file). Where they changed, every output the job did not itself
rewrite meanwhile is stale: it gets a STALE banner at its top (an atomic rewrite through
compute.files) and the job ends with one line naming the stale outputs and the command that
refreshes them. Test results made from vectors other than the ones now in the run are named
too. The next jobs.report or jobs.gallery writes its file whole, so the banner goes with it.

Before and after, rather than a record of what each output was made from: it needs nothing
from the writers of report.md and gallery.html, and a file opened later shows its state
without any tool. An output that is a link or not a regular file is named but not rewritten
(it is not ours to read through).
"""
from __future__ import annotations

import html
import re
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compute.plots import md_text
from compute.runlock import run_lock
from compute.runs import CASES_FILE, REPORT_FILE, SUMMARY_FILE, VECTORS_FILE, recorded_path, stored_config
from compute.storage import Place, as_place
from vectors.errors import InputError

GALLERY_FILE = "gallery.html"  # compute.gallery's name, kept here so the check imports no drawing code
RUN_FILES = (CASES_FILE, SUMMARY_FILE, VECTORS_FILE, REPORT_FILE, GALLERY_FILE, "samples.parquet", "run.json")
BEGIN, END = "<!-- vectorfind:stale -->", "<!-- /vectorfind:stale -->"
_BANNER = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n{0,2}", re.S)
_BODY = re.compile(r"<body[^>]*>\n?", re.I)
REFRESH = {REPORT_FILE: "jobs.report", GALLERY_FILE: "jobs.gallery"}  # output -> the job that redraws it
MAX_BYTES = 256 << 20  # a larger file is no output of ours: named, not read


def _sha256(path: Place) -> str | None:
    """The file's sha256, read in blocks; None if absent or unreadable. A path recorded in a
    run's metadata may name anything: what is not a file (a FIFO, /dev/zero) is not read."""
    try:
        if not path.is_file():  # before opening: opening a FIFO would wait
            return None if path.identity() is None else "not a regular file"
        return path.sha256()
    except OSError:
        return None


def tested_vectors(run: Place | Path) -> Place | None:
    """The vectors file the run's test recorded (its cases.parquet metadata), None if none
    (or a recorded name that is no plain path)."""
    recorded = (stored_config(as_place(run) / CASES_FILE, "test") or {}).get("vectors")
    try:
        return recorded_path(recorded, run) if isinstance(recorded, str) else None
    except InputError:
        return None


def fingerprint(run: Place | Path) -> dict[str, str | None]:
    """sha256 of each file report.md and gallery.html are drawn from (None: absent)."""
    run = as_place(run)
    paths = [run / CASES_FILE, run / SUMMARY_FILE, run / VECTORS_FILE]
    tested = tested_vectors(run)
    if tested is not None and tested.key() != (run / VECTORS_FILE).key():
        paths.append(tested)
    return {str(p): _sha256(p) for p in paths}


def test_is_stale(run: Place) -> bool:
    """True if the run's test recorded vectors whose hash is no longer that of the file."""
    test = stored_config(run / CASES_FILE, "test") or {}
    tested = tested_vectors(run)
    return tested is not None and isinstance(test.get("vectors_sha256"), str) and \
        _sha256(tested) != test["vectors_sha256"]


def test_command(run: Place) -> str:
    """The jobs.test command that remakes the run's test with its recorded cases and seed."""
    config = stored_config(run / CASES_FILE, "test") or {}
    extra = "".join(f" --{k} {config[k]}" for k in ("cases", "seed")
                    if isinstance(config.get(k), int) and not isinstance(config.get(k), bool))
    return f"python -m jobs.test --run {shlex.quote(str(run))}{extra}"


def refresh_command(run: Place, output: str) -> str:
    return f"python -m {REFRESH[output]} --run {shlex.quote(str(run))}"


def code_span(text: str) -> str:
    """`text` as a Markdown code span (shown literally, HTML included), on one line, fenced by
    more backticks than any run of them in it."""
    text = " ".join(text.splitlines())
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""  # CommonMark strips one space each side
    return f"{fence}{pad}{text}{pad}{fence}"


def banner_markdown(job: str, when: str, command: str) -> str:
    return (f"{BEGIN}\n> **STALE:** this report was drawn from results that {md_text(job)} rewrote at {when}; "
            f"its numbers and figures are out of date. Refresh it with: {code_span(command)}\n{END}\n\n")


def banner_html(job: str, when: str, command: str) -> str:
    style = "background:#b00020;color:#fff;padding:.6em 1em;font:bold 1.1em sans-serif"
    return (f'{BEGIN}<div id="vectorfind-stale" role="alert" style="{style}">STALE: this page was drawn from '
            f"results that {html.escape(job)} rewrote at {html.escape(when)}; its cases and strips are out of "
            f"date. Refresh it with: <code>{html.escape(command)}</code></div>{END}\n")


def with_banner(text: str, banner: str, page: bool) -> str:
    """`text` with `banner` at its top (after <body> on a page), replacing an earlier banner."""
    text = _BANNER.sub("", text, count=1)
    body = _BODY.search(text) if page else None
    at = body.end() if body else 0
    return text[:at] + banner + text[at:]


def mark_stale(path: Place | Path, banner: str) -> bool:
    """Put `banner` at the top of the output `path`; False where it is not ours to rewrite."""
    path = as_place(path)
    try:
        if not path.is_regular() or (path.size() or 0) > MAX_BYTES:
            return False
        text = path.read_text()
        path.write_text(with_banner(text, banner, path.suffix == ".html"))
        return True
    except (OSError, UnicodeDecodeError):
        return False


def stale_after(run: Place, job: str, before: tuple[dict, dict]) -> str | None:
    """Compare the run with its state `before` the job; mark what went stale and return the
    line that says so (None if nothing did)."""
    results, outputs = before
    if fingerprint(run) == results:
        return None
    stale = [name for name, identity in outputs.items()
             if identity is not None and (run / name).identity() == identity]  # there before, not redrawn since
    test = test_is_stale(run)
    if not stale and not test:
        return None
    first = [test_command(run)] if test else []  # the test goes before what is drawn from it
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    unmarked = []
    for name in stale:
        command = " && ".join(first + [refresh_command(run, name)])
        maker = banner_html if name == GALLERY_FILE else banner_markdown
        if not mark_stale(run / name, maker(job, when, command)):
            unmarked.append(name)
    named = [str(run / name) for name in stale]
    if test:
        named.insert(0, f"the test results in {run / CASES_FILE} (made from other vectors than "
                        f"{tested_vectors(run)} holds now)")
    note = f" ({', '.join(unmarked)} not marked: not a regular file of ours)" if unmarked else ""
    commands = first + [refresh_command(run, name) for name in REFRESH
                        if name in stale or (test and (run / name).exists())]
    return (f"stale after {job}: {', '.join(named)}{' (marked STALE)' if len(unmarked) < len(stale) else ''}"
            f"{note}; refresh with: {' && '.join(commands)}")


def is_run(directory: Place | Path) -> bool:
    """True for a directory holding a run's files (where a vectors file may feed a report)."""
    directory = as_place(directory)
    return directory.is_dir() and any((directory / name).exists() for name in RUN_FILES)


@contextmanager
def watching_results(run: Place | Path | None, job: str) -> Iterator[None]:
    """Run the block holding RUN's lock; at its end (also on an error) mark the outputs it made
    stale and print the one line that names them. A run None, or a directory that does not
    exist yet, has nothing to go stale: the block just runs."""
    if run is None or not as_place(run).is_dir():
        yield
        return
    run = as_place(run)
    with run_lock(run, create=False):
        before = (fingerprint(run), {name: (run / name).identity() for name in REFRESH})
        try:
            yield
        finally:
            line = stale_after(run, job, before)
            if line:
                print(line, flush=True)
