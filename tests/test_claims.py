"""make claims: the shared-state experiment, the code facts, the verdict rules, and a smoke run.

The experiment and the smoke run use real servers, real WebSocket clients and
real Locust on loopback; the verdict rules are fed made-up points so that each
rule is seen deciding both ways.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadtest import codefacts
from loadtest.claims import verdicts
from loadtest.serverproc import PROJECT_ROOT

BREAKAGES = ("out_of_order", "duplicate_seq", "seq_gaps", "lost", "connections_lost",
             "members_lost")  # fmt: skip


def _experiment(locked: bool) -> dict:
    command = [sys.executable, "-m", "loadtest.claims.sharedstate"]
    if not locked:
        command.append("--no-lock")
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout)


def test_chat_lock_keeps_every_room_in_order():
    """With chat_lock, concurrent senders, watchers and members coming and going break
    nothing; with it replaced by a no-op, the same load breaks the room's order."""
    locked, unlocked = _experiment(True), _experiment(False)
    assert locked["says_sent"] == unlocked["says_sent"] > 0
    assert {k: locked[k] for k in BREAKAGES} == dict.fromkeys(BREAKAGES, 0)
    assert verdicts.breakages(unlocked) > 0


def test_code_facts_find_the_locks_and_the_order_rule():
    """The code facts see chat_lock and the documented lock order in the threaded server,
    and no threading lock in the async server."""
    facts = codefacts.facts(PROJECT_ROOT)
    threaded, async_ = facts["threaded"], facts["async"]
    assert any("chat_lock" in lock for lock in threaded["locks"])
    assert len(threaded["lock_order_rules"]) >= 1
    assert not any("threading" in lock for lock in async_["locks"])
    assert async_["primitives"].get("await", 0) > 0
    assert threaded["lines"] > 0 and async_["lines"] > 0


def _point(variant, delay, ping, outcome="ok"):
    return {"variant": variant, "delay_ms": delay, "fanout_p99_ms": delay + 10,
            "probe_p99_ms": ping, "outcome": outcome, "loop_lag_p99_ms": None, "reason": "",
            "failure_ratio": 0.0}  # fmt: skip


def test_blocking_verdicts_decide_both_ways():
    """Threads compatible and the loop hurt: both claims supported; a loop that was not
    hurt: the incompatibility claim is not supported."""
    threaded = [_point("threaded", 0, 2), _point("threaded", 50, 6)]
    hurt = [_point("async", 0, 2), _point("async", 50, 3000, "limit")]
    fine = [_point("async", 0, 2), _point("async", 50, 5)]
    result = {"points": threaded + hurt}
    assert verdicts.blocking_compatibility(result)["verdict"] == verdicts.SUPPORTED
    assert verdicts.blocking_incompatibility(result)["verdict"] == verdicts.SUPPORTED
    result = {"points": threaded + fine}
    assert verdicts.blocking_incompatibility(result)["verdict"] == verdicts.NOT_SUPPORTED
    slow_threads = [_point("threaded", 0, 2), _point("threaded", 50, 40)]
    result = {"points": slow_threads + hurt}
    assert verdicts.blocking_compatibility(result)["verdict"] == verdicts.NOT_SUPPORTED


def _cpu(server, cores, demand=2.0, machine=60.0, outcome="limit"):
    return {"server": server, "demand_cores": demand, "cpu_cores_exact": cores,
            "machine_cpu_mean": machine, "says_per_s_offered": 200, "deliveries_per_s": 1000,
            "busiest_thread_share": 0.5, "outcome": outcome, "reason": "p99 over SLO"}  # fmt: skip


@pytest.mark.parametrize(
    ("cores", "outcome", "gil", "parallel"),
    [(0.88, "limit", verdicts.SUPPORTED, verdicts.NOT_SUPPORTED),
     (1.8, "limit", verdicts.NOT_SUPPORTED, verdicts.SUPPORTED),
     (0.7, "ok", verdicts.NOT_MEASURED, verdicts.NOT_MEASURED)],
)  # fmt: skip
def test_cpu_verdicts_decide_both_ways(cores, outcome, gil, parallel):
    """Stuck at one core with says queuing and a core free: the GIL claim holds and
    asyncio's parallelism does not; more than one core: the reverse; no queue: untested."""
    points = [_cpu("threaded", cores, outcome=outcome), _cpu("async", cores, outcome=outcome)]
    result = {"say_cpu_ms": 10, "points": points}
    assert verdicts.gil(result)["verdict"] == gil
    assert verdicts.true_parallelism(result)["verdict"] == parallel


def test_claims_runner_imports_no_locust():
    """The claims runner, like compare's, must not pull gevent's monkey-patching in."""
    code = (
        "import importlib, sys; importlib.import_module('loadtest.claims.__main__'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    )
    assert out.stdout.strip() == "[]"


def test_make_claims_smoke(tmp_path):
    """`python -m loadtest.claims --profile smoke` runs every scenario for real and writes
    a report with plots and a verdict or a reason for every one of the 14 claims."""
    subprocess.run(
        [sys.executable, "-m", "loadtest.claims", "--profile", "smoke", "--quiet",
         "--out", str(tmp_path), "--reports", str(tmp_path), "--compare", str(tmp_path / "none")],
        cwd=PROJECT_ROOT, check=True, timeout=400,
    )  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["claims"]) == 14
    assert all(row["verdict"] and row["tested_by"] for row in summary["claims"])
    for name in ("blocking.png", "cpubound.png", "report.html", "claims.md"):
        assert (tmp_path / name).stat().st_size > 0
    variants = {p["variant"] for p in summary["blocking"]["points"]}
    assert variants == {"threaded", "async", "async+thread"}
    assert all(p["calls"] > 0 and p["probe_pings"] > 0 for p in summary["blocking"]["points"])
    assert {p["server"] for p in summary["cpubound"]["points"]} == {"threaded", "async"}
    page = (tmp_path / "report.html").read_text()
    assert ":data:`" not in page and "``" not in page, "docstring markup leaked into the report"
    assert "A smoke run" in page  # its smaller loads are not passed off as the described ones
