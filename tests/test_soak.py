"""Soak test (slow; not in CI by default): one Streamlit server, several browser sessions clicking through pages
for a bounded time. Reports the server's RSS over time and every error seen; passes with zero errors and RSS flat
after warm-up (growth under 25 % from the first round's end to the last).

Run:  SOAK_SECONDS=120 SOAK_SESSIONS=4 .venv/bin/python -m pytest -m slow tests/test_soak.py -s
"""

import os
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, free_port, start_streamlit, sync_api, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
ROUTES = [
    "Logit_Lens",
    "Token?token=" + quote(" an"),
    "Neuron?layer=25&neuron=1527",
    "Token?token=" + quote(" the"),
    "Neuron?layer=27&neuron=554&matrix=W_E",
    "Logit_Lens?prompt="
    + quote("The capital of France is the city of")
    + "&answer="
    + quote(" Paris")
    + "&wrong="
    + quote(" Rome"),
    "Neuron?layer=99&neuron=1",  # a bad URL: must give a message, not an exception
]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow
def test_many_sessions_for_a_while():
    seconds, sessions = float(os.environ.get("SOAK_SECONDS", 120)), int(os.environ.get("SOAK_SESSIONS", 4))
    port = free_port()
    server = start_streamlit(port)
    url = f"http://127.0.0.1:{port}"
    errors, samples, loads = [], [], 0
    try:
        wait_healthy(url, server)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            tabs = [browser.new_context().new_page() for _ in range(sessions)]  # one session each
            start, rounds = time.monotonic(), 0
            while time.monotonic() - start < seconds:
                for i, tab in enumerate(tabs):  # every session asks for a page at once …
                    tab.goto(f"{url}/{ROUTES[(rounds + i) % len(ROUTES)]}", wait_until="commit")
                for i, tab in enumerate(tabs):  # … then each is read when Streamlit has drawn it
                    tab.wait_for_selector("h1", timeout=180_000)
                    tab.wait_for_function("!document.querySelector('[data-testid=stSkeleton]')", timeout=180_000)
                    for element in tab.query_selector_all("[data-testid=stException]"):
                        errors.append(f"{ROUTES[(rounds + i) % len(ROUTES)]}: {element.inner_text()[:200]}")
                    loads += 1
                rounds += 1
                samples.append((round(time.monotonic() - start), rss_mb(server.pid)))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"\nsoak: {sessions} sessions, {loads} page loads in {seconds:.0f} s, {len(errors)} errors; "
        f"server RSS (s, MB): {samples}"
    )
    assert not errors, errors
    warm, last = samples[0][1], samples[-1][1]
    assert last < 1.25 * warm, f"RSS grew from {warm:.0f} MB to {last:.0f} MB"
