"""The picking page (RUN/gallery.html) in a real headless browser with a default profile:
Debian's chromium and chromedriver driven by selenium. Rows, self-containment, sorting by a
header click, the column heads in view while scrolling, the legend, and the one download
(picks.csv) compared bit-exact with the run's codes and read by jobs.render."""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import call_job

INSTALL = ("install them: apt-get install -y chromium chromium-driver (Debian), and "
           "pip install -e '.[cpu,test]' for selenium")


@pytest.fixture(scope="module")
def run(finished_run) -> Path:
    """A small run made by the main job, which writes the gallery too (the session's, shared
    with tests/test_editor.py: read only here)."""
    out, done = finished_run(n=3000, cases=12)
    assert "picking page of the passed cases" in done.stdout
    return out


@pytest.fixture(scope="module")
def cases(run):
    table = pq.read_table(run / "cases.parquet")
    passed = table.filter(table["passed"])
    assert passed.num_rows >= 3, f"the small run passed only {passed.num_rows} cases; the test needs 3"
    return passed


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless chromium with a default profile but for where downloads go; fails (not skips)
    without it. No download permission is granted: a page that starts a second download from
    one click has it blocked, as a user's browser would."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is missing; {INSTALL}")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.fail(f"the gallery test needs chromium and chromedriver on PATH; {INSTALL}")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the requests the page makes
    # Only the download directory is set. (CDP's Page.setDownloadBehavior "allow" would also
    # let a second download from one click through, which a default profile blocks.)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def row_ids(browser) -> list[int]:
    return [int(r.get_attribute("data-case")) for r in browser.find_elements("css selector", "#cases tbody tr")]


def header(browser, text: str):
    matches = [h for h in browser.find_elements("css selector", "#cases th.sortable")
               if " ".join(h.text.split()) == text]
    assert len(matches) == 1, f"no single sortable header {text!r}"
    return matches[0]


def wait_for(paths: list[Path], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(p.is_file() for p in paths) and not list(paths[0].parent.glob("*.crdownload")):
            return
        time.sleep(0.1)
    raise AssertionError(f"downloads did not arrive: {sorted(p.name for p in paths[0].parent.iterdir())}")


def test_gallery_in_a_browser(run, cases, browser, bundle, bundle_dir, tmp_path):
    page = run / "gallery.html"
    browser.get(page.resolve().as_uri())
    ids, sums = cases["case_id"].to_pylist(), cases["sum_abs_corr"].to_pylist()
    assert row_ids(browser) == [c for _, c in sorted(zip((-s for s in sums), ids))]  # best first
    assert f"{cases.num_rows} of 12 test cases passed" in browser.find_element("tag name", "header").text

    # self-contained: one PNG data URI per case and property, nothing fetched
    images = [i.get_attribute("src") for i in browser.find_elements("css selector", "#cases img")]
    assert len(images) == 3 * cases.num_rows and all(s.startswith("data:image/png;base64,") for s in images)
    requests = [m["params"]["request"]["url"] for m in (json.loads(e["message"])["message"]
                                                        for e in browser.get_log("performance"))
                if m["method"] == "Network.requestWillBeSent"]
    assert [u for u in requests if not u.startswith("data:")] == [page.resolve().as_uri()]
    assert re.search(r'(src|href)="(?!data:image/png;base64,)|<link|<iframe|@import|url\(', page.read_text()) is None

    # sorting: case id ascending, then descending; corr pose ascending
    header(browser, "case").click()
    assert row_ids(browser) == sorted(ids)
    header(browser, "case").click()
    assert row_ids(browser) == sorted(ids, reverse=True)
    pose = cases["corr_pose"].to_pylist()
    header(browser, "corr pose").click()
    assert row_ids(browser) == [c for _, c in sorted(zip(pose, ids))]

    # tick two cases (in the displayed order: not by case id): one click, one file
    shown = row_ids(browser)
    picked = sorted([shown[0], shown[-1]])
    for case_id in (shown[-1], shown[0]):
        browser.find_element("css selector", f'input.pick[value="{case_id}"]').click()
    assert "2 ticked" in browser.find_element("id", "count").text
    browser.find_element("id", "download").click()
    picks_file = browser.downloads / "picks.csv"
    wait_for([picks_file])
    time.sleep(1.5)  # the old page's second file came 0.3 s after the first
    assert sorted(p.name for p in browser.downloads.iterdir()) == ["picks.csv"]

    w = {c: np.asarray(v, np.float32) for c, v in zip(ids, cases["w"].to_pylist())}
    group = dict(zip(ids, cases["group"].to_pylist()))
    rows = list(csv.reader(io.StringIO(picks_file.read_text())))
    assert rows[0] == ["case_id", "group", "bundle_sha256"] + [f"w{i}" for i in range(512)]  # a w run's codes
    assert [int(r[0]) for r in rows[1:]] == picked
    for r in rows[1:]:
        case_id = int(r[0])
        assert r[1] == group[case_id] and r[2] == bundle.manifest_sha256
        assert r[3:] == [repr(float(x)) for x in w[case_id]]  # the float32 values, full precision
        assert np.array_equal(np.array(r[3:], np.float64), w[case_id].astype(np.float64))

    # the downloaded file is what jobs.render reads: no warning (ids and codes are the run's)
    from compute.editor import export_editor

    editor = tmp_path / "editor"
    export_editor(run, editor, bundle_dir)
    done = call_job("jobs.render", "--picks", str(picks_file), "--bundle", str(editor), "--set", "pose=1",
                    "--out", str(tmp_path / "faces"))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert sorted(p.name for p in (tmp_path / "faces").iterdir()) == [f"case_{c}.png" for c in picked]


def test_head_stays_in_view_and_legend(run, cases, browser, bundle):
    """Scrolled past the table's top, the column heads sit right under the download bar; the
    legend names each group letter's score and median, and consistency says lower is better."""
    browser.set_window_size(1400, 420)
    browser.get((run / "gallery.html").resolve().as_uri())
    top = browser.execute_script("return document.querySelector('#cases thead').getBoundingClientRect().top")
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    scrolled, bar, head, first = browser.execute_script(
        "const r = s => document.querySelector(s).getBoundingClientRect();"
        "return [window.scrollY, r('#bar'), r('#cases thead th'), r('#cases tbody tr')];")
    assert scrolled > top, "the page is too short to scroll the table's head away; the test needs a smaller window"
    assert bar["top"] == 0 and abs(head["top"] - bar["bottom"]) <= 1 and first["top"] < head["top"]
    assert browser.find_element("id", "download").is_displayed()

    from compute.tables import read_metadata

    test = read_metadata(run / "cases.parquet")["test"]
    medians, grouping = test["median_values"], test["method"]["group_by"]
    legend = " ".join(browser.find_element("id", "legend").text.split())
    assert len(grouping) == 3
    for k, score in enumerate(grouping):
        assert f"letter {k + 1}: {score} (median {medians[score]:.4g})" in legend
    assert "h: the face's score is at or above that median, l: below it" in legend
    assert "\u26a0 a negative correlation: the edit moves that score the wrong way" in legend
    assert " ".join(header(browser, "consistency lower is better").text.split()) == "consistency lower is better"
    browser.set_window_size(1400, 1000)


def test_gallery_job_top_and_bad_input(run, cases, bundle_dir, tmp_path):
    copy = tmp_path / "copy"  # a copied run reads its own vectors; the module's gallery stays as it is
    copy.mkdir()
    for name in ("cases.parquet", "vectors.parquet"):
        shutil.copy(run / name, copy / name)
    done = call_job("jobs.gallery", "--run", str(copy), "--top", "2", "--bundle", str(bundle_dir))
    assert done.returncode == 0, done.stderr
    assert f"2 cases to pick from ({cases.num_rows} of 12 passed)" in done.stdout
    assert (copy / "gallery.html").read_text().count("<tr data-case=") == 2
    for args, message in [(["--run", str(tmp_path / "absent")], "no run directory"),
                          (["--run", str(tmp_path), "--bundle", str(bundle_dir)], "has no cases.parquet"),
                          (["--run", str(run), "--top", "0"], "--top must be at least 1")]:
        bad = call_job("jobs.gallery", *args)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad


def test_negative_correlations_are_flagged(run, cases, bundle_dir, tmp_path):
    """A passed case whose edit moves a score the wrong way (corr < 0, |corr| over the cutoff)
    is marked in its cell and counted in the intro; the others are not."""
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(run / "vectors.parquet", copy / "vectors.parquet")
    table = pq.read_table(run / "cases.parquet")
    wrong = cases["case_id"][0].as_py()
    flipped = [-c if i == wrong else c for i, c in zip(table["case_id"].to_pylist(), table["corr_pose"].to_pylist())]
    column = table.schema.get_field_index("corr_pose")
    changed = table.set_column(column, "corr_pose", pa.array(flipped, table["corr_pose"].type))
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), copy / "cases.parquet")
    done = call_job("jobs.gallery", "--run", str(copy), "--bundle", str(bundle_dir))
    assert done.returncode == 0, done.stderr
    page = (copy / "gallery.html").read_text()
    marked = re.findall(r'<tr data-case="(\d+)">.*?<td class="num neg" data-value="([^"]+)"[^>]*>\u26a0 (-[\d.]+)</td>',
                        page)
    assert [(int(c), float(v)) for c, v, _ in marked] == [(wrong, -abs(cases["corr_pose"][0].as_py()))]
    assert page.count('class="num neg"') == 1 and "1 of them with a negative correlation (\u26a0)" in page


def decode(uri: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_strips_follow_the_method_space(bundle):
    """w:A-B edits only its layers (all layers equal w); z runs go through the mapping."""
    from compute.gallery import edit_strips
    from compute.plots import to_rgb
    from compute.sessions import make_session, run_single
    from vectors.method import Method

    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, bundle.w_dim)).astype(np.float32)
    groups = ["all", "all"]
    directions = {"all": rng.standard_normal((1, bundle.w_dim)).astype(np.float32)}
    props = [{"name": "mouth", "schedule": [-2.0, 2.0], "cutoff": 0.9}]
    strips = {space: edit_strips(bundle, w, groups, directions, Method.from_dict(
        {"properties": props, "group_by": [], "space": space})) for space in
        ("w", f"w:0-{bundle.num_ws - 1}", "w:0-1")}
    assert strips["w"] == strips[f"w:0-{bundle.num_ws - 1}"]
    assert strips["w"] != strips["w:0-1"]

    z = rng.standard_normal((1, bundle.z_dim)).astype(np.float32)
    zero = {"all": np.zeros((1, z.shape[1]), np.float32)}
    [[strip]] = edit_strips(bundle, z, ["all"], zero, Method.from_dict({"properties": props, "group_by": [],
                                                                        "space": "z"}))
    mapping, synthesis = (make_session(bundle.graph_bytes(s)) for s in ("mapping", "synthesis"))
    face = to_rgb(run_single(synthesis, run_single(mapping, z))[0])  # the project's 8-bit rule
    image = decode(strip)
    assert np.array_equal(image[:, :face.shape[1]], face)
    assert np.array_equal(image[:, -face.shape[1]:], face)


def test_the_legend_states_the_methods_pass_rule():
    from compute.gallery import _legend
    from vectors.method import Method

    medians = {g: 0.5 for g in Method().group_by}
    seeds, signed = _legend(Method(), medians), _legend(Method(pass_rule="signed"), medians)
    assert "passes on |corr| (the seeds' rule" in seeds and "passes on |corr| all the same" in seeds
    assert "passes on corr itself" in signed and "|corr|" not in signed
