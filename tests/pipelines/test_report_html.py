"""report.html opened in headless Chromium (Debian's `chromium`, driven by playwright): every plot
loads, the results table has a row per task x metric, and the page fetches nothing.

The screenshot is saved as a test artifact: $MLLM_TEST_ARTIFACTS (default test-artifacts/ in
the working directory) /report.png.
"""

import os
import shutil
from pathlib import Path

import pytest

from mortgagellm.pipelines import report
from tests.pipelines.test_report import run_dir, table  # noqa: F401  (the fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_report_html_renders_in_chromium_offline(run_dir):  # noqa: F811
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium package: apt-get install -y chromium "
                    "(make browser does it)")
    from playwright.sync_api import sync_playwright

    md = report.build(run_dir, "configs/fixture.yaml")
    page_file = md.parent / "report.html"
    expected = table(md.read_text())
    assert len(expected) > 5
    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
            ("file:", "data:")) else route.abort())
        page.goto(page_file.as_uri())
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.complete, e.naturalWidth, e.src.slice(0, 22)])")
        first_table = page.eval_on_selector_all(
            "table", "ts => [...ts].map(t => [...t.rows].map(r => [...r.cells].map(c => "
                     "c.innerText.trim())))")
        artifacts = Path(os.environ.get("MLLM_TEST_ARTIFACTS", "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)
        browser.close()
    # losses, sweep and one plot per task group, all decoded from data: URIs
    assert len(images) >= 3
    assert all(done and width > 0 and src == "data:image/png;base64," for done, width, src
               in images), images
    results = next(t for t in first_table if t[0][:2] == ["task", "metric"])
    assert [(r[0], r[1]) for r in results[1:]] == list(expected)
    assert any("[" in cell for cell in results[1][4:])  # intervals are in the cells
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert (artifacts / "report.png").stat().st_size > 10_000
