"""`make loadtest-capacity`: Locust's capacity as a run of the comparison runner,
judged on Locust's CPU rather than on the server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadtest.compare import steps
from loadtest.compare.profiles import LOCUST_CAPACITY_RULES, StepRules, locust_capacity
from loadtest.serverproc import PROJECT_ROOT


def _row(index: int, users: int, **changes) -> steps.StepRow:
    row = {"connects": float(users), "locust_cpu_mean": 50.0, "latency_over_slo_share": 0.0,
           "window_s": 8.0}  # fmt: skip
    return steps.StepRow(index, users, start=0.0, end=10.0, **{**row, **changes})


def test_the_capacity_profile_judges_locust_not_the_server():
    """Latency over the SLO and failures that end a comparison are ok in a capacity run;
    Locust above 90 % of a core ends it at once; a server that refuses still ends it."""
    slow_and_failing = _row(0, 500, latency_over_slo_share=0.5, failure_ratio=0.2)
    assert steps.judge(slow_and_failing, StepRules()).outcome == steps.Outcome.LIMIT
    assert steps.judge(slow_and_failing, LOCUST_CAPACITY_RULES).outcome == steps.Outcome.OK
    saturated = _row(1, 1000, locust_cpu_mean=95.0)
    judged = steps.judge(saturated, LOCUST_CAPACITY_RULES)
    assert judged.outcome == steps.Outcome.INVALID
    rows = [slow_and_failing, saturated]
    rows[1].outcome = judged.outcome
    assert steps.should_stop(rows, LOCUST_CAPACITY_RULES)
    refused = _row(2, 1500, rejected={"capacity": 3.0})
    assert steps.judge(refused, LOCUST_CAPACITY_RULES).criterion == steps.Criterion.REFUSED
    prof = locust_capacity("capacity-fanout", [500, 1000, 1500], 20.0, 8.0, 200.0)
    assert prof.levels() == [500, 1000, 1500]


@pytest.mark.timeout(180)
def test_capacity_fanout_steps_until_locust_saturates_or_the_last_step(tmp_path):
    """A short fanout run writes capacity.json with one row per step (Locust CPU, receptions
    per second, µs per delivery from the runner's samples) and prints its summary."""
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.capacity_bench", "fanout", "--fanout-step", "20",
         "--fanout-max", "40", "--step-time", "5", "--step-window", "3",
         "--reports", str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (out,) = tmp_path.glob("capacity-fanout-*")
    result = json.loads((out / "capacity.json").read_text())
    assert [s["users_target"] for s in result["steps"]] == [20, 40]
    for step in result["steps"]:
        assert step["users"] == step["users_target"] and step["failures"] == 0
        assert step["receptions_per_s"] > 0 and 0 < step["locust_cpu_percent"] < 90
        assert step["locust_us_per_delivery"] > 0 and step["fanout_avg_ms"] > 0
    assert result["summary"].startswith("fanout: ") and "receptions/s" in result["summary"]
    assert (out / "async-samples.jsonl").exists()
    assert "fanout: " in done.stdout
