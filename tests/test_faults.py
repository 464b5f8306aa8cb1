"""Faults (#28 item 2): writers SIGKILLed mid cache write and mid dashboards part (core/cache.py's test-only
TNE_FAULT_AT hook) leave no corrupt entry and no temp file, and a resumed build equals a clean one bit for bit; then
a short fault campaign (bench/faults.py: a hosted server with workers, a visitor in Chromium, kills of every kind)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import cache

ROOT = Path(__file__).resolve().parents[1]


def child(code: str, folder: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python on cache folder `folder`, with TNE_FAULT_AT=fault when given."""
    env = {k: v for k, v in os.environ.items() if k != cache.FAULT_ENV}
    env["TNE_CACHE_DIR"] = str(folder)
    if fault:
        env[cache.FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


SAVE_TWO = """
import numpy as np
from core import cache
cache.save(cache.key_path("fp", "t", {"i": 0}), {"x": np.arange(100_000)})
cache.save(cache.key_path("fp", "t", {"i": 1}), {"x": np.arange(100_000) * 2})
print("both saved")
"""


def test_a_writer_killed_mid_write_leaves_no_entry_half_written_and_its_temp_is_swept(tmp_path, monkeypatch):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path))
    old = cache.key_path("fp", "t", {"i": 1})
    cache.save(old, {"x": np.arange(10)})  # an earlier entry under the key being rewritten
    done = child(SAVE_TWO, tmp_path, "cache.write@2")  # dies at its second write, half of it on disk
    assert done.returncode == -9 and "both saved" not in done.stdout
    temps = list(tmp_path.rglob(f"{cache.TEMP_PREFIX}*"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # the half-written file, never renamed into place
    assert np.array_equal(cache.load(cache.key_path("fp", "t", {"i": 0}))["x"], np.arange(100_000))
    assert np.array_equal(cache.load(old)["x"], np.arange(10))  # the old entry, whole
    # a prune never counts (or deletes) another writer's temp; the first cache access of a process sweeps it
    cache.prune(0)
    assert temps[0].exists()
    live = temps[0].parent / f"{cache.temp_prefix()}live.npz"  # a writer still alive (this process)
    live.write_bytes(b"x")
    monkeypatch.setattr(cache, "_swept", False)
    cache.load(old)
    assert not temps[0].exists() and live.exists()
    assert child(SAVE_TWO, tmp_path).stdout.strip() == "both saved"  # unarmed, the hook does nothing
    assert np.array_equal(cache.load(old)["x"], np.arange(100_000) * 2)


BUILD = """
from core.corpus import dashboards
from core.engine.model import load_model
model = load_model({folder!r}, device="cpu")
dash = dashboards.build(model, dashboards.DashboardSpec("bundled", 600, ctx=32, batch_size=2, part_batches=2))
print(dash.positions)
"""


def test_a_dashboards_build_killed_mid_part_resumes_to_a_clean_builds_bytes(gpt2_folder, tmp_path):
    code = BUILD.format(folder=str(gpt2_folder))
    clean, faulted = tmp_path / "clean", tmp_path / "faulted"
    assert child(code, clean).returncode == 0
    first = child(code, faulted, "dashboards.part@3")  # mid part 2 of ~5: part 1's checkpoint on disk
    assert first.returncode == -9
    [state] = faulted.rglob("state.npz")
    assert cache.load(state)["done"].sum() == 1
    again = child(code, faulted, "dashboards.part@3")  # resumed, killed again further on
    assert again.returncode == -9 and cache.load(state)["done"].sum() == 2
    assert child(code, faulted).returncode == 0  # resumed to the end
    [want], [got] = clean.rglob("dashboards.npz"), faulted.rglob("dashboards.npz")
    with np.load(want) as a, np.load(got) as b:
        assert a.files == b.files
        for name in a.files:
            assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name
    assert not list(faulted.rglob("state.npz")) and not list(faulted.rglob(f"{cache.TEMP_PREFIX}*"))
    assert sorted(p.name for p in got.parent.iterdir()) == sorted(p.name for p in want.parent.iterdir())


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="/usr/bin/chromium is missing")
def test_a_short_fault_campaign_leaves_nothing_corrupt_and_shows_no_traceback():
    pytest.importorskip("playwright")
    sys.path.insert(0, str(ROOT / "bench"))
    import faults

    report = faults.run(kills=3, visitors=1, seed=0, wait_s=(2.0, 6.0), pages=("story", "lens", "corpus", "steer"))
    print("\n".join(report.details))
    assert report.kills >= 3 and report.restarts >= 2
    assert (report.corrupt_entries, report.mismatches, report.tracebacks) == (0, 0, 0), report.details
    assert report.other_errors == 0 and report.temp_files == 0, report.details
    assert report.entries > 0
