"""Smoke run of the benchmark suite (`make bench BENCH=smoke`): every figure is produced.

The figures themselves are not asserted: this machine is noisy; they are published.
"""

from __future__ import annotations

import json
import os

import pytest

from loadtest.bench.__main__ import main
from loadtest.bench.fixedrate import BARE_OF, summarize
from loadtest.bench.servers import SPECS, exact_cpu_seconds

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    assert main(["--size", "smoke", "--out", str(out)]) == 0
    latest = out / "latest"
    return {
        "json": json.loads((latest / "results.json").read_text()),
        "md": (latest / "results.md").read_text(),
    }


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.parametrize("name", [spec.name for spec in SPECS])
def test_fanout_figures(smoke, name):
    """Fan-out gives deliveries/s and server CPU per million deliveries for every server."""
    rows = smoke["json"]["servers"][name]["fanout"]
    assert rows
    for row in rows:
        assert row["deliveries"] > 0
        for key in ("deliveries_per_s", "server_cpu_s_per_1m_deliveries",
                    "server_cpu_util", "client_cpu_util"):  # fmt: skip
            assert _number(row[key]), key


@pytest.mark.parametrize("name", [spec.name for spec in SPECS])
def test_fixed_rate_figures(smoke, name):
    """Fixed rate gives server CPU per delivery, the rate achieved and the client's CPU."""
    row = smoke["json"]["servers"][name]["fixed_rate"]
    config = smoke["json"]["config"]
    assert row["members"] == config["rate_members"]
    assert row["deliveries"] > 0 and row["server_cpu_seconds"] > 0
    for key in ("server_us_per_delivery", "server_cpu_util", "client_cpu_util",
                "client_us_per_delivery", "says_per_s", "max_send_lag_ms"):  # fmt: skip
        assert _number(row[key]), key
    assert 0.5 < row["achieved"] < 1.5  # the members got about what was offered
    assert row["lost_connections"] == 0
    if name in BARE_OF:  # twinchat's own count agrees with the members' count
        assert 0.5 < row["server_count_vs_received"] < 1.5
        assert _number(row["x_bare"]) and row["reference"] == BARE_OF[name]


def test_fixed_rate_ratio_is_taken_within_each_round():
    """A server's ratio to its bare reference pairs rounds by number, not by rank."""
    rows = {
        "threaded": [{"round": 1, "server_us_per_delivery": 9.0},
                     {"round": 2, "server_us_per_delivery": 12.0},
                     {"round": 3, "server_us_per_delivery": 8.0}],
        "bare-threaded": [{"round": 1, "server_us_per_delivery": 6.0},
                          {"round": 2, "server_us_per_delivery": 10.0},
                          {"round": 3, "server_us_per_delivery": 4.0}],
    }  # fmt: skip
    out = summarize(rows)
    assert out["threaded"]["x_bare_per_round"] == [1.5, 1.2, 2.0]
    assert out["threaded"]["x_bare"] == 1.5
    assert out["threaded"]["server_us_per_delivery"] == 9.0  # the median round
    assert out["threaded"]["rounds"] == [9.0, 12.0, 8.0]  # in the order they ran
    assert "x_bare" not in out["bare-threaded"]


def test_exact_cpu_seconds_reads_every_thread():
    """schedstat CPU time of this process is positive and counts at least this thread."""
    seconds, threads = exact_cpu_seconds(os.getpid())
    assert seconds > 0 and threads >= 1


@pytest.mark.parametrize("name", [spec.name for spec in SPECS])
def test_capacity_figures(smoke, name):
    """Capacity gives RSS, threads and fds per connection at the probe and at the maximum."""
    cap = smoke["json"]["servers"][name]["capacity"]
    assert cap["held"] > 0
    for point in ("at_probe", "at_max"):
        for key in ("rss_kib_per_connection", "threads_per_connection", "fds_per_connection"):
            assert _number(cap[point][key]), (point, key)


@pytest.mark.parametrize("name", [spec.name for spec in SPECS])
def test_handshake_figures(smoke, name):
    """Handshake rate gives handshakes/s and server CPU per handshake for every server."""
    hs = smoke["json"]["servers"][name]["handshake"]
    assert hs["completed"] > 0
    assert _number(hs["handshakes_per_s"]) and _number(hs["server_cpu_ms_per_handshake"])


def test_report_has_every_target_and_context(smoke):
    """The report states date, machine, versions, pinning, ratios and a pass/miss per target."""
    result = smoke["json"]
    for key in ("date", "machine", "versions", "pinning", "throughput_args"):
        assert result[key]
    assert {r["server"] for r in result["ratios"]} == {"threaded", "async-uvloop", "async-asyncio"}
    statuses = [line["status"] for line in result["targets"]]
    # a throughput ratio per size for each server, the threaded fixed-rate ratio,
    # 2 async and 4 threaded footprint targets
    assert len(statuses) == 2 * len(result["config"]["receivers"]) + 1 + 6
    assert set(statuses) <= {"pass", "miss"}
    assert smoke["md"].count("**PASS**") + smoke["md"].count("**MISS**") == len(statuses)
    assert "## Fixed rate" in smoke["md"]
