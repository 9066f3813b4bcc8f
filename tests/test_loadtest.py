"""The Locust load tests: real Locust runs against both servers, and the receiver logic.

Locust monkey-patches the whole process with gevent when imported. The runs go
through a ``locust`` subprocess; the in-process tests import ``loadtest.users``
with ``LOCUST_SKIP_MONKEY_PATCH`` so the rest of the pytest session is unaffected.
"""

from __future__ import annotations

import csv
import importlib
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from loadtest.locustcmd import locust_command
from loadtest.serverproc import KINDS, PROJECT_ROOT, free_port, running_server

RUN_LIMIT = 120  # seconds: a hung Locust fails the test instead of hanging it


def headless_locust(url: str, csv_prefix: Path, *args: str) -> list[str]:
    return locust_command(
        url, "--headless", "--only-summary", "--csv", str(csv_prefix), "--stop-timeout", "5", *args
    )


def locust_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_locust(url: str, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    prefix = tmp_path / "run"
    result = subprocess.run(
        headless_locust(url, prefix, *args),
        cwd=PROJECT_ROOT,
        env=locust_env(),
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT,
    )
    return result, prefix


@pytest.fixture
def locust_modules(monkeypatch):
    """Import the loadtest modules without gevent's monkey-patching of this process."""
    monkeypatch.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
    users = importlib.import_module("loadtest.users")
    shape = importlib.import_module("loadtest.shape")
    exporter = importlib.import_module("loadtest.exporter")
    return SimpleNamespace(users=users, shape=shape, exporter=exporter)


@pytest.fixture
def local_env(locust_modules):
    """A real Locust Environment with a local runner (its stats listen to request events)."""
    from locust.env import Environment
    from locust.event import Events

    env = Environment(user_classes=[locust_modules.users.ChatUser], events=Events())
    runner = env.create_local_runner()
    yield env
    runner.quit()


# -- real runs ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_chat_scenario_against_server(kind, tmp_path):
    """A headless chat run with 30 users records connect/join/ack/fanout and no failure."""
    with running_server(kind) as server:
        result, prefix = run_locust(
            server.url,
            tmp_path,
            "--scenario",
            "chat",
            "-u",
            "30",
            "-r",
            "30",
            "-t",
            "6",
            "--room-size",
            "10",
            "--say-every",
            "1",
            "--exporter-port",
            "0",
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    rows = {row["Name"]: row for row in read_csv(prefix.with_name("run_stats.csv"))}
    for name in ("connect", "join", "ack", "fanout"):
        assert name in rows, f"{name} missing from the stats CSV: {sorted(rows)}"
        assert int(rows[name]["Request Count"]) > 0
    assert all(int(row["Failure Count"]) == 0 for row in rows.values()), rows
    assert "seq" not in rows
    assert read_csv(prefix.with_name("run_failures.csv")) == []
    assert "seq gap" not in output


@pytest.mark.parametrize("kind", KINDS)
def test_idle_scenario_pings_from_the_heartbeat_and_stops_at_once(kind, tmp_path):
    """Idle users ping every 0.5-0.75 s (sent by the process's heartbeat, timed by their
    pongs) with no failure; at the end they are waiting, so Locust stops them at once
    instead of waiting out --stop-timeout."""
    with running_server(kind) as server:
        result, prefix = run_locust(
            server.url,
            tmp_path,
            *("--scenario", "idle", "-u", "40", "-r", "40", "-t", "5"),
            *("--ping-every", "0.5", "--exporter-port", "0"),
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    rows = {row["Name"]: row for row in read_csv(prefix.with_name("run_stats.csv"))}
    assert int(rows["connect"]["Request Count"]) == 40
    assert int(rows["ping"]["Request Count"]) >= 40 * 3  # 4+ s of pings each
    assert all(int(row["Failure Count"]) == 0 for row in rows.values()), rows
    assert "Not all users finished" not in output


@pytest.mark.parametrize("kind", KINDS)
def test_server_at_capacity_shows_as_connect_failures(kind, tmp_path):
    """Users refused by a full server are 'connect' failures with one stable message."""
    with running_server(kind, "--max-connections", "5") as server:
        result, prefix = run_locust(
            server.url, tmp_path, "-u", "10", "-r", "10", "-t", "4", "--exporter-port", "0"
        )
    assert result.returncode == 1, "failures must fail the run"
    failures = read_csv(prefix.with_name("run_failures.csv"))
    assert [(row["Name"], row["Error"]) for row in failures] == [
        ("connect", "ConnectFailed('handshake refused: HTTP 503')")
    ]


def test_chat_scenario_with_two_processes(tmp_path):
    """With --processes 2 the master's CSV aggregates both workers, with no failure; with
    --source-address each process connects from its own address."""
    log = tmp_path / "server.log"
    with running_server("async", log_path=log) as server:
        result, prefix = run_locust(
            server.url,
            tmp_path,
            "--processes",
            "2",
            "--source-address",
            "127.0.0.2",
            "-u",
            "20",
            "-r",
            "20",
            "-t",
            "6",
            "--say-every",
            "1",
            "--exporter-port",
            "0",
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    rows = {row["Name"]: row for row in read_csv(prefix.with_name("run_stats.csv"))}
    assert int(rows["connect"]["Request Count"]) == 20
    assert int(rows["fanout"]["Request Count"]) > 0
    assert all(int(row["Failure Count"]) == 0 for row in rows.values()), rows
    sources = re.findall(r" from \('(127\.[0-9.]+)'", log.read_text())
    assert len(sources) == 20 and set(sources) == {"127.0.0.2", "127.0.0.3"}, sources


def test_step_shape_guard_and_exporter(tmp_path):
    """The step shape runs its steps and ends the test; the exporter serves every metric;
    a CPU threshold below the actual use is recorded as cpu_saturated failures."""
    port = free_port()
    with running_server("async") as server:
        prefix = tmp_path / "run"
        command = headless_locust(
            server.url,
            prefix,
            "--scenario",
            "chat",
            "--say-every",
            "0.5",
            "--step-users",
            "4",
            "--step-time",
            "3",
            "--step-max",
            "8",
            "--exporter-port",
            str(port),
            "--cpu-threshold",
            "0.001",
        )
        proc = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=locust_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        metrics = ""
        try:
            for _ in range(50):
                time.sleep(0.2)
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as resp:
                        metrics = resp.read().decode()
                except OSError:
                    continue
                if "locust_requests_total" in metrics and 'name="fanout"' in metrics:
                    break
            output, _ = proc.communicate(timeout=RUN_LIMIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name in (
        "locust_users",
        "locust_requests_total",
        "locust_failures_total",
        "locust_response_time_seconds_bucket",
        "locust_cpu_percent",
        "locust_cpu_saturated",
        "locust_cpu_saturation_warnings_total",
        "process_cpu_seconds_total",
    ):
        assert name in metrics, f"{name} not exported"
    assert "Shape test completed" in output, output[-3000:]
    assert proc.returncode == 1, "cpu_saturated failures must fail the run"
    history = read_csv(prefix.with_name("run_stats_history.csv"))
    user_counts = [int(row["User Count"]) for row in history if row["Name"] == "Aggregated"]
    assert 4 in user_counts and 8 in user_counts and max(user_counts) == 8, user_counts
    failures = read_csv(prefix.with_name("run_failures.csv"))
    names = {row["Name"] for row in failures}
    assert "cpu_saturated" in names, failures
    assert names <= {"cpu_saturated"}, failures


# -- receiver logic --------------------------------------------------------------------


def frame(**fields) -> bytes:
    return orjson.dumps(fields)


def message(room: str, seq: int, sender: str = "other", **extra) -> bytes:
    return frame(type="message", room=room, seq=seq, ts=0.0, text="hi", **{"from": sender}, **extra)


def test_seq_tracker_reports_gaps_and_duplicates():
    """SeqTracker returns 0 in order, the missing count on a gap, -1 on a duplicate."""
    from loadtest.client.chat import SeqTracker

    tracker = SeqTracker()
    assert tracker.check("r", 7) == 0  # not joined: nothing to check
    tracker.joined("r", 40)
    assert tracker.check("r", 41) == 0
    assert tracker.check("r", 43) == 1
    assert tracker.check("r", 44) == 0
    assert tracker.check("r", 44) == -1
    assert tracker.check("r", 47) == 2
    tracker.left("r")
    assert tracker.check("r", 99) == 0


def receive(user, *payloads: bytes, now: float | None = None) -> None:
    """Hand text frames to the user's client as its receive path does after a recv."""
    frames = [(1, True, payload) for payload in payloads]
    user.client.handle_frames(frames, time.time() if now is None else now)


def flush(env) -> None:
    """Merge the client's batched samples into Locust's stats now."""
    from loadtest.client.reactor import reactor_for

    reactor_for(env).stats.flush(time.time(), everything=True)


def test_receiver_records_seq_gap_as_failure(locust_modules, local_env):
    """A receiver that sees seq 41 then 43 records one 'seq' failure in Locust's stats."""
    user = locust_modules.users.ChatUser(local_env)
    receive(user, frame(type="joined", room=user.room, seq=40, members=2, complete=True))
    receive(user, message(user.room, 41), message(user.room, 43))
    stats = local_env.stats
    seq = stats.get("seq", "WS")
    assert seq.num_failures == 1
    errors = [e for e in stats.errors.values() if e.name == "seq"]
    assert len(errors) == 1 and "seq gap" in str(errors[0].error)
    receive(user, message(user.room, 43))
    assert stats.get("seq", "WS").num_failures == 2


def test_receiver_measures_ack_fanout_and_errors(locust_modules, local_env):
    """Own messages count as ack, others' as fanout; error frames and bad JSON are failures."""
    user = locust_modules.users.ChatUser(local_env)
    receive(user, frame(type="joined", room=user.room, seq=0, members=2, complete=True))
    now = time.time()
    receive(
        user,
        message(user.room, 1, sender=user.chat_name, sent_at=now),
        message(user.room, 2, sender="someone", sent_at=now),
        message(user.room, 3, sender="someone", sent_at=now),
        message(user.room, 4, sender="web-user"),  # no sent_at: not measured
        frame(type="error", code="rate_limited", message="slow down"),
        b"not json",
        frame(type="message", room=user.room, seq="5", ts=0.0, text="hi", **{"from": "x"}),
    )
    flush(local_env)
    stats = local_env.stats
    assert stats.get("ack", "WS").num_requests == 1
    assert stats.get("fanout", "WS").num_requests == 2
    assert stats.get("fanout", "WS").num_failures == 0
    assert stats.get("error", "WS").num_failures == 1
    assert stats.get("protocol", "WS").num_failures == 2
    assert stats.get("seq", "WS").num_requests == 0


def test_refused_connection_is_a_connect_failure(locust_modules, local_env):
    """Nothing listening: connect() returns False and records one 'connect' failure."""
    user = locust_modules.users.ChatUser(local_env)
    user.client.url = f"ws://127.0.0.1:{free_port()}/ws"
    assert user.client.connect() is False
    assert not user.client.connected
    assert local_env.stats.get("connect", "WS").num_failures == 1
    [error] = local_env.stats.errors.values()
    assert "ConnectionRefusedError" in str(error.error)


def test_websocket_url_normalizes_host(locust_modules):
    """-H accepts ws:// URLs, http:// URLs and bare host:port, all ending at /ws."""
    url = locust_modules.users.websocket_url
    assert url("ws://127.0.0.1:8002/ws") == "ws://127.0.0.1:8002/ws"
    assert url("http://127.0.0.1:8002") == "ws://127.0.0.1:8002/ws"
    assert url("127.0.0.1:8001/") == "ws://127.0.0.1:8001/ws"
    with pytest.raises(ValueError):
        url(None)


# -- step shape and exporter -------------------------------------------------------------


def test_step_plan_steps(locust_modules):
    """The step plan climbs by step users, ramps at the spawn rate, holds each step for the
    step time after its ramp, caps at max, then stops."""
    plan = locust_modules.shape.StepPlan.linear(10, 10, 35, step_time=30, spawn_rate=5)
    assert plan.levels == (10, 20, 30, 35)
    assert [(s.start, s.ramp_end, s.end) for s in plan.steps()] == [
        (0, 2, 32),
        (32, 34, 64),
        (64, 66, 96),
        (96, 97, 127),
    ]
    assert plan.duration == 127
    assert plan.at(0) == (10, 5)
    assert plan.at(31.9) == (10, 5)
    assert plan.at(32) == (20, 5)
    assert plan.at(100) == (35, 5)
    assert plan.at(127) is None


def test_step_plan_explicit_levels(locust_modules):
    """--step-levels gives every step's users; the default spawn rate ramps the largest
    rise in one second; nonsense is a clear error."""
    options = SimpleNamespace(step_levels="100,150,300", step_time=10, step_spawn_rate=0)
    plan = locust_modules.shape.StepPlan.from_options(options)
    assert plan.levels == (100, 150, 300)
    assert plan.spawn_rate == 150
    with pytest.raises(ValueError, match="step-levels"):
        locust_modules.shape.StepPlan.from_options(
            SimpleNamespace(**{**vars(options), "step_levels": "100,lots"})
        )


def test_step_plan_first_ramp_at_its_own_rate(locust_modules):
    """--step-first-spawn-rate sets the rate of the ramp from zero users only (a narrowing
    run's gentle climb to the last good level), with --step-levels or a linear plan; the
    shape hands Locust that rate."""
    options = SimpleNamespace(
        step_levels="300,400", step_time=10, step_spawn_rate=100, step_first_spawn_rate=25
    )
    plan = locust_modules.shape.StepPlan.from_options(options)
    assert [(s.start, s.ramp_end, s.end) for s in plan.steps()] == [(0, 12, 22), (22, 23, 33)]
    assert plan.at(5) == (300, 25)
    assert plan.at(22.5) == (400, 100)
    linear = locust_modules.shape.StepPlan.from_options(
        SimpleNamespace(step_users=100, step_start=0, step_max=200, num_users=0, step_time=10,
                        step_spawn_rate=100, step_first_spawn_rate=25)
    )  # fmt: skip
    assert [(s.start, s.ramp_end) for s in linear.steps()] == [(0, 4), (14, 15)]


def test_step_plan_defaults_from_options(locust_modules):
    """--step-start defaults to --step-users, --step-max to -u, the spawn rate to a step/s."""
    options = SimpleNamespace(
        step_users=100, step_start=0, step_max=0, num_users=300, step_time=60, step_spawn_rate=0
    )
    plan = locust_modules.shape.StepPlan.from_options(options)
    assert plan.levels == (100, 200, 300)
    assert plan.spawn_rate == 100
    with pytest.raises(ValueError):
        locust_modules.shape.StepPlan.from_options(
            SimpleNamespace(**{**vars(options), "num_users": None})
        )


def test_exporter_collects_from_locust_stats(locust_modules, local_env):
    """The collector exports requests, failures, histogram and the guard's CPU state."""
    from prometheus_client import CollectorRegistry

    exp = locust_modules.exporter
    fire = local_env.events.request.fire
    for ms in (0.4, 3, 30, 3000):
        fire(request_type="WS", name="fanout", response_time=ms, response_length=1, exception=None)
    fire(request_type="WS", name="seq", response_time=0, response_length=1, exception=ValueError())
    guard = exp.SaturationGuard(local_env, threshold=90)
    guard.sample(50.0)
    guard.sample(97.0)
    registry = CollectorRegistry()
    registry.register(exp.LocustCollector(local_env, guard))
    value = registry.get_sample_value
    assert value("locust_requests_total", {"name": "fanout"}) == 4
    assert value("locust_failures_total", {"name": "fanout"}) == 0
    assert value("locust_failures_total", {"name": "seq"}) == 1
    assert value("locust_response_time_seconds_bucket", {"name": "fanout", "le": "0.001"}) == 1
    assert value("locust_response_time_seconds_bucket", {"name": "fanout", "le": "0.05"}) == 3
    assert value("locust_response_time_seconds_bucket", {"name": "fanout", "le": "+Inf"}) == 4
    assert value("locust_response_time_seconds_count", {"name": "fanout"}) == 4
    assert value("locust_users") == 0
    assert value("locust_cpu_percent") == 97.0
    assert value("locust_cpu_saturated") == 1
    assert value("locust_cpu_saturation_warnings_total") == 1
    guard.sample(10.0)
    assert value("locust_cpu_saturated") == 0


def test_every_scenario_has_a_user_class_and_a_latency(locust_modules):
    """The scenario table is the one list: the locustfile can run each name it offers."""
    from loadtest import scenarios

    assert set(locust_modules.users.USER_CLASSES) == set(scenarios.NAMES)
    assert scenarios.DEFAULT in scenarios.NAMES
    assert {s.latency for s in scenarios.SCENARIOS.values()} <= {"fanout", "ping"}


def test_locust_defaults_are_computed_once_and_handed_out_as_copies(locust_modules):
    """loadtest/locustfix.py: Locust's workers ask for the default options once per option of
    every spawn message; the answer stays what Locust computes, each caller gets its own copy,
    and installing twice wraps once."""
    from locust import argument_parser

    from loadtest import locustfix

    original = getattr(
        argument_parser.default_args_dict, "__wrapped__", argument_parser.default_args_dict
    )
    expected = original()
    locustfix.install()
    locustfix.install()
    assert argument_parser.default_args_dict.__wrapped__ is original
    first = argument_parser.default_args_dict()
    assert first == expected
    first["host"] = "changed by a caller"
    assert argument_parser.default_args_dict() == expected
