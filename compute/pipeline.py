"""The whole method as one library call: sample, fit, test, report (what `jobs.vectorfind` runs).

Each stage reuses its output in the run directory when it was made with the same settings
(compute.runs), so the same call twice does the work once and an interrupted run picks up
where it stopped.
"""
from __future__ import annotations

from pathlib import Path

from compute.fitting import fit_directions
from compute.gallery import write_gallery
from compute.report import write_report
from compute.run_record import write_record
from compute.runlock import holding_run_lock
from compute.sampling import check_sampling_input, sample_table
from compute.storage import Place, as_place
from compute.testing import run_test
from vectors.errors import InputError
from vectors.groups import check_fixed_medians
from vectors.method import Method


def check_run_input(bundle, method: Method, n: int, cases: int, seed: int, run: Place | Path | None = None) -> None:
    """Every check that needs no cluster, so bad input fails before Ray starts."""
    method.check_scores(bundle.score_names)
    method.check_layers(bundle.num_ws)
    if not isinstance(cases, int) or cases < 1:
        raise InputError(f"the test needs at least 1 case, got {cases!r}")
    check_sampling_input(bundle, n, seed, run)


@holding_run_lock("run")  # the whole method holds RUN's lock; the stages take it again
def run_method(run: Place | Path, bundle, method: Method = Method(), n: int = 80000, cases: int = 500, seed: int = 0,
               resources=None, batch_size: int | None = None, drop_nonfinite: bool = False,
               progress: bool = True) -> dict:
    """Sample n faces, fit the method's directions, test them on `cases` fresh faces and write
    RUN/report.md and RUN/gallery.html; returns the test summary. Needs a connected Ray instance."""
    from compute.resources import plan_resources

    check_run_input(bundle, method, n, cases, seed, run)
    resources = resources or plan_resources()
    run = as_place(run)
    write_record(run, bundle, method)  # RUN/run.json: later jobs on the run find its bundle and method
    fits = len(method.group_names) * len(method.properties)
    say = print if progress else (lambda *a, **k: None)
    say(f"[1/4] sampling {n:,} faces into {run}", flush=True)
    sample_table(bundle, n, seed, run, batch_size=batch_size, resources=resources, progress=progress,
                 read_back=False,
                 first_chunk_check=lambda scores: check_fixed_medians(method, bundle.manifest.get("group_medians", {}),
                                                                      scores, n))
    say(f"[2/4] fitting {fits} directions in {method.space} (ratio {method.ratio})", flush=True)
    vectors = fit_directions(run, method, seed, drop_nonfinite, progress=progress)
    say(f"[3/4] testing {cases} cases x {method.edits_per_case} edits", flush=True)
    summary = run_test(run, bundle, method, cases, seed, resources, vectors, progress=progress)
    say("[4/4] writing the report", flush=True)
    write_report(run, bundle)
    say(f"      picking page of the passed cases: {write_gallery(run, bundle)}", flush=True)
    return summary
