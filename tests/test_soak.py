"""`make soak`: a one-step run of the comparison runner, reduced to the server's drift."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadtest.serverproc import PROJECT_ROOT
from loadtest.soak import drift


def test_drift_is_the_slope_per_hour_over_the_steady_window():
    """RSS growing 1 KiB a second inside the window is +3.5 MiB/h; samples outside the
    window and samples where the server did not answer are left out."""
    samples = [{"t": t, "server": {"rss": 1000.0 + 1024 * t, "fds": 50.0, "threads": 5.0}}
               for t in range(0, 100)]  # fmt: skip
    samples[50]["server"] = None
    samples += [{"t": 100.0, "server": {"rss": 10**9, "fds": 50.0, "threads": 5.0}}]
    got = drift(samples, 10.0, 99.0)
    assert got["rss"]["per_hour"] == pytest.approx(1024 * 3600)
    assert got["rss"]["change"] == pytest.approx(1024 * 89)
    assert got["fds"] == {"start": 50.0, "end": 50.0, "change": 0.0, "per_hour": 0.0}


@pytest.mark.timeout(180)
def test_soak_writes_its_report_from_a_one_step_run(tmp_path):
    """A short soak against the async server writes soak.json and soak.md with RSS, fds and
    threads at the start and end, their drift, the server's counts and no failure."""
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.soak", "--server", "async", "--users", "50",
         "--duration", "6", "--warmup", "2", "--spawn-rate", "50", "--sample-every", "2",
         "--out", str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (out,) = tmp_path.glob("soak-async-*")
    result = json.loads((out / "soak.json").read_text())
    assert result["users"] == 50 and result["failures"] == {}
    assert result["start"]["connections"] == result["end"]["connections"] == 50
    assert result["start"]["rss"] > 0 and result["drift"]["rss"]["per_hour"] is not None
    assert result["said"] > 0 and result["delivered"] >= result["said"]
    assert result["received"] > 0 and result["fanout_p99_ms"] is not None
    assert result["exit_code"] == 0 and result["samples"]
    md = (out / "soak.md").read_text()
    assert "### Soak, async server" in md and "| RSS |" in md and "failures: none" in md
