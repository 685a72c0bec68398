"""The picking page (RUN/gallery.html) in a real headless browser: Debian's chromium and
chromedriver driven by selenium. Rows, self-containment, sorting by a header click, and
the two downloads compared bit-exact with the run's codes."""
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
import pyarrow.parquet as pq
import pytest

from conftest import call_job

INSTALL = ("install them: apt-get install -y chromium chromium-driver (Debian), and "
           "pip install -e '.[cpu,test]' for selenium")


@pytest.fixture(scope="module")
def run(bundle_dir, ray_session, tmp_path_factory) -> Path:
    """A small run made by the main job, which writes the gallery too."""
    out = tmp_path_factory.mktemp("gallery") / "run"
    done = call_job("jobs.vectorfind", "--bundle", str(bundle_dir), "--out", str(out), "--n", "3000", "--cases", "12")
    assert done.returncode == 0, done.stderr
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
    """Headless chromium with downloads into its own directory; fails (not skips) without it."""
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
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "profile.default_content_setting_values.automatic_downloads": 1})  # two files from one click
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
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


def test_gallery_in_a_browser(run, cases, browser, bundle):
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

    # tick two cases (in the displayed order: not by case id), download both files
    shown = row_ids(browser)
    picked = sorted([shown[0], shown[-1]])
    for case_id in (shown[-1], shown[0]):
        browser.find_element("css selector", f'input.pick[value="{case_id}"]').click()
    assert "2 ticked" in browser.find_element("id", "count").text
    browser.find_element("id", "download").click()
    csv_path, json_path = browser.downloads / "picks.csv", browser.downloads / "picks.json"
    wait_for([csv_path, json_path])

    w = {c: np.asarray(v, np.float32) for c, v in zip(ids, cases["w"].to_pylist())}
    group = dict(zip(ids, cases["group"].to_pylist()))
    rows = list(csv.reader(io.StringIO(csv_path.read_text())))
    assert rows[0] == ["case_id", "group", "bundle"] + [f"z{i}" for i in range(512)]
    assert [int(r[0]) for r in rows[1:]] == picked
    for r in rows[1:]:
        case_id = int(r[0])
        assert r[1] == group[case_id] and r[2] == bundle.manifest_sha256[:16]
        assert r[3:] == [repr(float(x)) for x in w[case_id]]  # the float32 values, full precision
        assert np.array_equal(np.array(r[3:], np.float64), w[case_id].astype(np.float64))

    picks = json.loads(json_path.read_text())
    assert {k: v for k, v in picks.items() if k != "picks"} == {
        "format": "vectorfind-picks", "version": 1, "bundle_manifest_sha256": bundle.manifest_sha256,
        "space": "w", "run": str(run.resolve())}
    assert [(p["case_id"], p["group"]) for p in picks["picks"]] == [(c, group[c]) for c in picked]
    for p in picks["picks"]:
        assert np.array_equal(np.array(p["code"], np.float64), w[p["case_id"]].astype(np.float64))


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
    face = np.round(to_rgb(run_single(synthesis, run_single(mapping, z))[0]) * 255).astype(np.uint8)
    image = decode(strip)
    assert np.array_equal(image[:, :face.shape[1]], face)
    assert np.array_equal(image[:, -face.shape[1]:], face)
