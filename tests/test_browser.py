"""The post's story clicked through in a real browser: `streamlit run app.py` on a free localhost port, Debian's
Chromium driven by Playwright (from PyPI; its own browser download is never used).

Opens Patching with the post's prompts in the URL, runs the patching, clicks the top neuron of the neuron sweep and
lands on that neuron's page, which shows ' an' as its top congruent token. A screenshot of each step is saved in
tests/artifacts/ (git-ignored, kept by CI as test artefacts). And puts links, images, HTML and maths into URLs:
a local "tracker" server records any request the page makes to it; there must be none.
"""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlencode, urlparse

import pytest

from core.story import CLEAN as POST_CLEAN
from core.story import CORRUPTED as POST_CORRUPTED

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SLOW = 240_000  # ms: patching runs on 2 CPU cores, possibly beside other tests

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, deadline_s: float = 120) -> None:
    """Poll Streamlit's health endpoint until it answers (or the server dies, or the deadline passes)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}: {server.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"streamlit did not answer at {url} within {deadline_s} s")


def start_streamlit(port: int, *flags: str) -> subprocess.Popen:
    """`streamlit run app.py` on localhost:port, headless and offline; its output piped (wait_healthy reads it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    command += ["--server.headless", "true", "--server.address", "127.0.0.1", *flags]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def app_url():
    port = free_port()
    server = start_streamlit(port, "--browser.gatherUsageStats", "false")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture()
def page(app_url):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1440, "height": 1000})
        try:
            yield tab
        finally:
            browser.close()


def settled(page) -> None:
    """Wait until Streamlit has drawn everything: no loading skeletons, every Plotly chart has its SVG."""
    page.wait_for_function("() => document.querySelectorAll(\"[data-testid='stSkeleton']\").length === 0", timeout=SLOW)
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll("[data-testid='stPlotlyChart']"))
                                   .every(chart => chart.querySelector('.main-svg'))""",
        timeout=SLOW,
    )


def shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def test_patching_sweep_click_opens_the_an_neuron(app_url, page):
    query = urlencode(
        {"clean": POST_CLEAN, "corrupted": POST_CORRUPTED, "answer": " an", "wrong": " a"}, quote_via=quote
    )  # spaces as %20: ' an' keeps its leading space
    page.goto(f"{app_url}/Patching?{query}")
    run = page.get_by_role("button", name="Run patching")
    run.wait_for(timeout=SLOW)
    assert page.get_by_label("Corrupted prompt (same number of tokens)").input_value() == POST_CORRUPTED
    shot(page, "1_patching_inputs")

    run.click()
    page.get_by_text("Neuron sweep of MLP 25").wait_for(timeout=SLOW)
    settled(page)
    sweep = page.locator("[data-testid='stPlotlyChart']").filter(has_text="Neuron sweep")
    page.get_by_role("heading", name="Neuron sweep of MLP 25").evaluate("e => e.scrollIntoView({block: 'start'})")
    # twice: the top neuron anywhere (exact) and the top neuron of the MLP 25 sweep
    assert page.locator("[data-testid='stMetricValue']").filter(has_text="L25.N1527").count() == 2
    shot(page, "2_patching_neuron_sweep")

    # The highlighted trace lists the top neurons best first: its first point is the top neuron.
    top_point = sweep.locator(".scatterlayer .trace").nth(1).locator("path.point").first
    box = top_point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("() => location.pathname.endsWith('/Neuron')", timeout=SLOW)
    page.get_by_role("heading", name="Neuron L25.N1527").wait_for(timeout=SLOW)
    assert "layer=25" in page.url and "neuron=1527" in page.url
    top_token = page.locator("[data-testid='stMetric']").filter(has_text="top token")
    assert top_token.locator("[data-testid='stMetricValue']").inner_text().strip() == "␣an"
    settled(page)
    shot(page, "3_neuron_page")


def test_every_page_opens_without_error(app_url, page):
    for path, heading in (
        ("", "Token Neuron Explorer"),
        ("Logit_Lens", "Logit lens"),
        ("Token", "Token"),
        ("Search", "Search: token neurons across the whole model"),
        ("Corpus", "Corpus check"),
        ("Prompt", "Prompt"),
        ("Steer", "Steer"),
    ):
        page.goto(f"{app_url}/{path}")
        page.get_by_role("heading", name=heading).first.wait_for(timeout=SLOW)
        settled(page)
        assert page.locator("[data-testid='stException']").count() == 0
        assert page.locator("[data-testid='stAlertContentError']").count() == 0, path
    # the Steer page generated (streamed) both runs in the browser: negating the an-neuron changes " an" to " a"
    page.get_by_text("First change at new token 0").first.wait_for(timeout=SLOW)
    shot(page, "4_steer_page")


@pytest.fixture(scope="module")
def tracker():
    """A local HTTP server that records every request: an injected image or a prefetched link would hit it."""
    hits: list[str] = []

    class Record(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()


def test_user_text_in_urls_never_becomes_a_link_or_an_image(app_url, page, tracker):
    base, hits = tracker
    payload = (
        f'[Log in again]({base}/login) ![t]({base}/md.png) <img src="{base}/html.png"> $x^2$ '
        f"{base}/bare \u202eevil https://evil.example/login www.evil.example mail@evil.example"
    )
    for path, query, shown in (
        ("Token", {"token": payload}, "[data-testid='stAlertContentError']"),
        ("Search", {"kind": payload}, "[data-testid='stAlertContentError']"),
        ("Logit_Lens", {"answer": payload}, "[data-testid='stAlertContentError']"),
        ("Neuron", {"layer": "25", "neuron": "1527", "prompt": payload}, ".activation-text"),
    ):
        page.goto(f"{app_url}/{path}?{urlencode(query, quote_via=quote)}")
        box = page.locator(shown).filter(has_text="[Log in again](").first
        box.wait_for(timeout=SLOW)
        settled(page)
        text = box.inner_text().replace("\u2060", "")  # word joiners break autolinks; they are invisible
        assert f"[Log in again]({base}/login) ![t]({base}/md.png) <img src=" in text, text  # literally
        assert "$x^2$" in text and "\u202e" not in text, text  # no maths, and the bidi control is not live: a
        # message writes it out (itself, or repr() of it); tokens show its bytes' pieces, as the tokenizer split it
        assert "<U+202E>evil" in text or "\\u202eevil" in text or path == "Neuron", text
        assert page.locator(f"a[href^='{base}'], img[src^='{base}'], [src^='{base}']").count() == 0, path
        # no autolinks: a link may carry the text only inside the query of one of the app's own pages (the Neuron
        # page's "Steer this neuron" link passes its prompt on), where it is inert
        hrefs = page.locator("[data-testid='stMain'] a[href*='evil.example']").evaluate_all(
            "els => els.map(e => e.href)"
        )
        assert all(urlparse(h).netloc == urlparse(app_url).netloc for h in hrefs), (path, hrefs)
        assert page.locator("[data-testid='stMain'] .katex").count() == 0, path
    shot(page, "5_injection_shown_as_text")
    page.goto(f"{app_url}/_stcore/health")  # a last round trip: anything the pages started has been sent by now
    assert hits == [], hits


@pytest.fixture(scope="module", autouse=True)
def keep_screenshot_for_readme():
    """After the run, the sweep screenshot is what docs/screenshot.png is refreshed from (by hand: it is committed)."""
    yield
    source = ARTIFACTS / "2_patching_neuron_sweep.png"
    if source.exists() and os.environ.get("TNE_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(source, ROOT / "docs" / "screenshot.png")


def test_what_drives_the_an_neuron_click_a_head_shows_where_it_reads(app_url, page):
    query = urlencode({"layer": "25", "neuron": "1527", "corrupted": POST_CORRUPTED}, quote_via=quote)
    page.goto(f"{app_url}/Neuron?{query}")
    page.get_by_role("heading", name="What drives it").wait_for(timeout=SLOW)
    settled(page)
    chart = page.locator("[data-testid='stPlotlyChart']").filter(has_text="What drives L25.N1527")
    chart.scroll_into_view_if_needed()
    shot(page, "4_what_drives_it")
    # Bars are drawn smallest first (the largest at the top): the second-largest is L23.H0 on the post's prompt.
    bars = chart.locator(".barlayer .point path")
    second = bars.nth(bars.count() - 2)
    box = second.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.get_by_text("Head L23.H0").first.wait_for(timeout=SLOW)
    page.wait_for_function("() => location.search.includes('head=L23.H0')", timeout=SLOW)
    settled(page)
    page.locator("[data-testid='stPlotlyChart']").filter(
        has_text="attention pattern"
    ).first.scroll_into_view_if_needed()
    shot(page, "5_head_reads_from")
