"""Smoke run of the benchmark suite (`make bench BENCH=smoke`): every figure is produced.

The figures themselves are not asserted: this machine is noisy; they are published.
"""

from __future__ import annotations

import json

import pytest

from loadtest.bench.__main__ import main
from loadtest.bench.servers import SPECS

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
    # a throughput ratio per size for each server, 2 async and 4 threaded footprint targets
    assert len(statuses) == 2 * len(result["config"]["receivers"]) + 6
    assert set(statuses) <= {"pass", "miss"}
    assert smoke["md"].count("**PASS**") + smoke["md"].count("**MISS**") == len(statuses)
