"""`make compare`: the smoke profile end to end, and the rules that decide a limit."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from loadtest import cpubudget, prom
from loadtest.compare import claims, diagnosis, knee, sampler, steps, walls
from loadtest.compare.plots import PLOTS
from loadtest.compare.profiles import StepRules, connection_ceiling, processes_for, profile
from loadtest.serverproc import PROJECT_ROOT

KINDS = ("threaded", "async")


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    """Run the smoke profile once through the command line (both servers, real Locust)."""
    reports = tmp_path_factory.mktemp("reports")
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.compare", "--profile", "smoke", "--reports", str(reports)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    latest = reports / "latest"
    assert latest.is_symlink()
    return latest.resolve(), result.stdout


@pytest.mark.timeout(300)
def test_smoke_writes_report_summary_and_every_plot(smoke_report):
    """The smoke run writes report.html, summary.json and every plot, PNGs embedded in the HTML."""
    out, _ = smoke_report
    html = (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for name in PLOTS:
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert name in summary["plots"]
    assert html.count("data:image/png;base64,") == len(PLOTS)
    for kind in KINDS:
        assert (out / f"{kind}-locust_stats_history.csv").exists()
        assert (out / f"{kind}-samples.jsonl").exists()


@pytest.mark.timeout(300)
def test_smoke_summary_has_a_limit_or_not_reached_for_both_servers(smoke_report):
    """summary.json holds, for each server, a limit in users or an explicit "not reached"."""
    out, _ = smoke_report
    summary = json.loads((out / "summary.json").read_text())
    assert [row["server"] for row in summary["headline"]] == list(KINDS)
    for kind in KINDS:
        limit = summary["servers"][kind]["limit"]
        if limit["reached"]:
            assert limit["users"] > 0 and limit["criterion"]
        else:
            assert limit["criterion"].startswith("not reached")
        assert summary["servers"][kind]["steps"], kind
    assert summary["machine"]["cpus"] >= 1
    assert {c["verdict"] for c in summary["claims"]} <= {
        "supported",
        "not supported",
        "not measured here",
    }
    budget = summary["budget"]
    assert budget["why"]  # a budget, or the reason there is none
    for kind in KINDS:
        assert summary["servers"][kind]["server_cpus"] == budget["cores"]


@pytest.mark.timeout(300)
def test_smoke_report_cites_the_article_inside_the_project(smoke_report):
    """The report names the article by title and date and points to no path outside
    the repository."""
    out, _ = smoke_report
    html = (out / "report.html").read_text()
    assert "Concurrency models in Python: threads vs Asyncio" in html
    assert "2023-09-15" in html
    assert "shared/seed" not in html and "../" not in html


@pytest.mark.timeout(300)
def test_smoke_prints_progress_lines(smoke_report):
    """The run says which server and step it is on while it runs."""
    _, stdout = smoke_report
    for kind in KINDS:
        assert f"[compare] {kind}" in stdout
    assert "step 1/2" in stdout


@pytest.mark.timeout(300)
def test_render_rebuilds_the_report_from_the_raw_samples(smoke_report):
    """--render recomputes steps, limits and plots from a report's files, same verdicts."""
    out, _ = smoke_report
    before = json.loads((out / "summary.json").read_text())
    (out / "latency.png").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.compare", "--render", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((out / "summary.json").read_text())
    assert (out / "latency.png").exists()
    for kind in KINDS:
        assert after["servers"][kind]["limit"] == before["servers"][kind]["limit"]
        assert len(after["servers"][kind]["steps"]) == len(before["servers"][kind]["steps"])


def test_make_compare_runs_the_runner_with_profile_and_scenario():
    """`make compare PROFILE=smoke SCENARIO=idle` calls the runner with both (dry run)."""
    result = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "compare", "PROFILE=smoke", "SCENARIO=idle"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "-m loadtest.compare --profile smoke --scenario idle" in result.stdout
    assert "pip install" in result.stdout  # on a fresh clone the venv target installs first


def _row(index: int = 0, users_target: int = 100, **changes) -> steps.StepRow:
    """A healthy step row (100 connects, Locust at 50 %, nothing over the SLO, a 10 s
    judged window), changed."""
    row = {"connects": 100.0, "locust_cpu_mean": 50.0, "latency_over_slo_share": 0.0,
           "window_s": 10.0}  # fmt: skip
    return steps.StepRow(index, users_target, start=0.0, end=10.0, **{**row, **changes})


def test_a_port_in_time_wait_is_free_for_a_server():
    """After a big run thousands of loopback ports sit in TIME_WAIT; servers bind with
    SO_REUSEADDR, so those ports are free for the next run's servers."""
    import socket

    from loadtest.serverproc import is_free

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    listener.close()
    accepted.close()  # the server side closes first: its end, on `port`, enters TIME_WAIT
    client.recv(1)
    client.close()
    with socket.socket() as plain, pytest.raises(OSError):  # what the old check did
        plain.bind(("127.0.0.1", port))
    assert is_free("127.0.0.1", port)


def test_silence_is_unanswered_scrapes_not_a_slow_sampler():
    """Only scrapes that got no answer within the timeout make a server silent: samples far
    apart (a saturated machine slows the sampler too) do not."""

    def sample(t: float, answered: bool = True) -> dict:
        return {"t": t, "server": {} if answered else None}

    answered_late = [sample(0), sample(9), sample(10)]
    assert steps.silence(answered_late, 0, 20, timeout=5) == 0.0
    one_miss = [sample(0), sample(2, False), sample(8)]
    assert steps.silence(one_miss, 0, 20, timeout=5) == 5.0
    two_misses = [sample(0), sample(1, False), sample(7, False), sample(13)]
    assert steps.silence(two_misses, 0, 20, timeout=5) == 11.0


@pytest.mark.parametrize(
    ("changes", "outcome", "reason"),
    [
        ({}, "ok", ""),
        ({"server_exited": True}, "limit", "died"),
        ({"server_up": False, "server_silent_s": 7.0}, "limit", "unresponsive"),
        ({"rejected": {"capacity": 3.0}}, "limit", "refused"),
        ({"rejected": {"capacity": 3.0}, "connect_failures": 5.0}, "limit", "refused"),
        ({"connect_failures": 2.0}, "limit", "unresponsive"),
        ({"locust_cpu_mean": 95.0, "latency_over_slo_share": 0.5}, "invalid", "load generator"),
        ({"window_s": 0.0}, "invalid", "not measured"),
        ({"window_s": 0.0, "connect_failures": 2.0}, "limit", "unresponsive"),
        ({"failure_ratio": 0.02}, "limit", "failures"),
        ({"latency_over_slo_share": 0.011}, "limit", "p99 over SLO"),
        ({"latency_over_slo_share": 0.009}, "ok", ""),
        ({"rss_bytes": 8.1 * 2**30, "memory_total_bytes": 10 * 2**30}, "limit", "memory"),
        ({"rss_bytes": 7.9 * 2**30, "memory_total_bytes": 10 * 2**30}, "ok", ""),
    ],
)
def test_judge_applies_the_rules_in_order(changes, outcome, reason):
    """A step is a limit (died only when the process exited; unresponsive when alive but
    silent or its handshakes fail unrefused; refused; failures; SLO), invalid (not
    measured: no sample in its window; or Locust saturated) or ok."""
    got = steps.judge(_row(**changes), StepRules())
    assert got.outcome == outcome
    assert got.why.startswith(reason)
    if got.outcome == steps.Outcome.LIMIT:
        assert got.why.startswith(got.criterion)  # the words name the criterion


def test_c100k_profile_spreads_over_enough_processes_for_its_connections():
    """The c100k climb reaches 100,000 users over as many processes as the fd limit needs
    (each under it); a lower --step-max cuts the climb and needs fewer processes."""
    full = profile("c100k")
    assert full.levels()[0] == 10_000 and full.levels()[-1] == 100_000
    assert full.processes * connection_ceiling() >= 100_000
    assert (full.processes - 1) * connection_ceiling() < 100_000
    small = full.with_steps(maximum=20_000)
    assert small.levels() == [10_000, 20_000]
    assert small.processes == processes_for(20_000) < full.processes
    assert profile("quick").processes == 1


def test_sockstat_reads_the_kernels_tcp_figures(tmp_path):
    """/proc/net/sockstat's TCP line: sockets in use, TIME_WAIT, and buffer memory in bytes."""
    path = tmp_path / "sockstat"
    path.write_text(
        "sockets: used 3615\nTCP: inuse 3604 orphan 0 tw 20 alloc 3604 mem 113\n"
        "UDP: inuse 0 mem 0\n"
    )
    got = sampler.sockstat(path)
    assert got == {
        "inuse": 3604, "orphan": 0, "tw": 20, "alloc": 3604, "mem_bytes": 113 * sampler.PAGE
    }  # fmt: skip


def test_two_invalid_steps_end_the_run_as_not_reached():
    """Two saturated steps in a row: the load generator, not the server, was the limit."""
    invalid = {"outcome": steps.Outcome.INVALID, "reason": "cpu"}
    rows = [_row(0, 100), _row(1, 200, **invalid), _row(2, 300, **invalid)]
    assert steps.should_stop(rows, StepRules())
    limit = steps.verdict(rows, StepRules(), finished=False)
    assert not limit["reached"]
    assert limit["criterion"] == "not reached (load generator saturated)"
    assert limit["last_ok_users"] == 100
    # A step with no sample in its window (a starved sampler) was not measured at all.
    rows[2] = _row(2, 300, **invalid, window_s=0.0)
    limit = steps.verdict(rows, StepRules(), finished=False)
    assert limit["criterion"] == "not reached (steps not measured)"


def test_a_breach_followed_by_an_ok_step_is_transient_and_two_in_a_row_are_the_limit():
    """One SLO breach then an ok step: transient; two breaches in a row: the first is the limit."""
    breach = {
        "outcome": steps.Outcome.LIMIT, "criterion": steps.Criterion.SLO, "reason": "p99 over SLO"
    }  # fmt: skip
    rows = [_row(0, 100, **breach), _row(1, 200), _row(2, 300, **breach)]
    assert not steps.should_stop(rows, StepRules())
    rows.append(_row(3, 400, **breach))
    assert steps.should_stop(rows, StepRules())
    limit = steps.verdict(rows, StepRules(), finished=False)
    assert rows[0].outcome == steps.Outcome.TRANSIENT
    assert (limit["users"], limit["last_ok_users"]) == (300, 200)


def test_a_missed_locust_scrape_does_not_turn_a_step_into_the_whole_run():
    """A sample where Locust's exporter did not answer is skipped, not read as zero."""

    def sample(t, fanout_count, locust=True):
        buckets = [(0.5, fanout_count), (float("inf"), fanout_count)]
        return {
            "t": float(t),
            "server_t": float(t),
            "server": {"cpu_seconds": t * 0.1, "delivered": fanout_count, "connections": 10},
            "locust": {"users": 10, "requests": {"fanout": fanout_count}, "failures": {},
                       "latency": buckets} if locust else None,
            "locust_cpu": 10.0,
            "machine_cpu": 10.0,
        }  # fmt: skip

    samples = [sample(t, 1000 + 100 * t, locust=(t != 5)) for t in range(0, 11)]
    row = steps.summarize(0, 10, 0.0, 10.0, 5.0, samples, StepRules())
    assert row.latency_count == pytest.approx(600)  # t=4 (t=5 missed) to t=10, not 2,000
    assert row.fanout_receptions_per_s == pytest.approx(100)
    assert row.server_up and row.outcome == steps.Outcome.OK


def test_histogram_quantile_and_share_above_the_slo():
    """p99 and the share above a bucket bound come out as Prometheus would compute them."""
    buckets = [(0.1, 90.0), (0.5, 98.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert prom.quantile(0.5, buckets) == pytest.approx(0.1 * 50 / 90)
    assert prom.quantile(0.99, buckets) == pytest.approx(0.75)
    assert prom.share_above(0.5, buckets) == pytest.approx(0.02)
    assert prom.share_above(0.1, buckets) == pytest.approx(0.10)
    assert prom.quantile(0.99, []) is None


def test_profiles_climb_geometrically_up_to_the_connection_ceiling():
    """Every profile ends on its maximum (the fd ceiling), each step ~growth x the one
    before; smoke stays a two-step run."""
    assert profile("smoke").levels() == [20, 40]
    quick = profile("quick")
    levels = quick.levels()
    assert levels[-1] == connection_ceiling() and levels == sorted(set(levels))
    for low, high in itertools.pairwise(levels[:-1]):
        assert high / low == pytest.approx(quick.growth, rel=0.05)


@pytest.mark.parametrize("name", ["quick", "full"])
def test_narrowing_brackets_the_limit_within_the_profile_precision(name):
    """Probing the geometric middle, whatever the outcomes, ends with a bracket within
    the precision, in a handful of probes."""
    prof = profile(name)
    for true_limit in (1234, 2600, 7777, 15000):
        low = max(u for u in prof.levels() if u < true_limit)
        high = min(u for u in prof.levels() if u >= true_limit)
        probes = 0
        while (users := prof.narrowed(low, high)) is not None:
            probes += 1
            low, high = (users, high) if users < true_limit else (low, users)
        assert low < true_limit <= high
        assert high / low <= 1 + prof.precision + 0.01
        assert probes <= 3


def _limit(last_ok, limit=None):
    """A run's ``limit`` as summary.json keeps it (limit None: not reached)."""
    return {
        "reached": limit is not None, "users": limit, "last_ok_users": last_ok,
        "criterion": "handshakes timed out" if limit else "max step",
    }  # fmt: skip


@pytest.mark.parametrize(
    "threaded, async_, order, verdict",
    [
        ((5150, 5700), (5700, 8550), "async", "supported"),  # async held what broke threads
        ((5700, 8550), (3800, 5700), "threaded", "not supported"),
        ((3450, 3800), (3450, 3800), "same", "not supported"),  # same bracket: no difference
        ((5700, 8550), (7000, 7750), "overlap", "undecided"),  # a wide bracket around a narrow one
        ((5150, 5700), (4650, 5700), "overlap", "undecided"),
        ((19000, None), (5700, 8550), "threaded", "not supported"),
        ((5700, 8550), (19000, None), "async", "supported"),
        ((19000, None), (19000, None), None, "not measured here"),
    ],
)
def test_scales_further_needs_one_bracket_above_the_other(threaded, async_, order, verdict):
    """A limit is a bracket (last ok step, limit]: async "scales further" only when it held
    a load that broke threads; brackets that overlap cannot order the servers."""
    runs = {"threaded": {"limit": _limit(*threaded)}, "async": {"limit": _limit(*async_)}}
    assert claims.which_held_more(runs["threaded"]["limit"], runs["async"]["limit"]) == order
    assert claims.scalability(runs)["verdict"] == verdict


@pytest.mark.parametrize(
    "threaded, async_, verdict",
    [
        ((5150, 5700), (7000, 7750), "supported"),  # rates 25,750 vs 35,000 a second
        ((5700, 8550), (7000, 7750), "undecided"),  # threads may have served up to 8,550
        ((7000, 7750), (7000, 7750), "not supported"),
    ],
)
def test_more_requests_compares_rates_only_when_the_brackets_order_them(threaded, async_, verdict):
    """Deliveries/s at each server's last ok step order the two only when one bracket lies
    above the other (or they are the same): an overlap is undecided."""
    runs = {"threaded": {"limit": _limit(*threaded)}, "async": {"limit": _limit(*async_)}}
    side = {name: {"last_ok": {"deliveries_per_s": 5.0 * runs[name]["limit"]["last_ok_users"]}}
            for name in runs}  # fmt: skip
    row = claims.more_requests_less_time(runs, side["threaded"], side["async"])
    assert row["verdict"] == verdict


def _narrow(index, users, outcome, reason="", connections=None, phase="narrow"):
    return _row(
        index, users, outcome=steps.Outcome(outcome), reason=reason, phase=phase,
        connections=float(users if connections is None else connections),
    )  # fmt: skip


def test_narrowing_rows_move_the_limit_and_the_last_good_step():
    """A good probe raises the last good step, a breached one lowers the limit (with its
    own criterion); the repeat of the last good level that opens each narrowing run
    counts for nothing when it holds, and stops the narrowing when it breaches, as an
    invalid probe does, or one that broke on its way up below what the climb held."""
    climb = {"reached": True, "users": 3800, "criterion": "p99 over SLO", "step": 5,
             "last_ok_users": 2550, "last_ok_step": 4}  # fmt: skip
    rows = [
        _narrow(6, 2550, "ok", phase="base"), _narrow(7, 3100, "limit", "unresponsive (...)"),
        _narrow(8, 2550, "transient", "p99 over SLO (...)", phase="base"),
        _narrow(9, 2800, "ok"),
    ]  # fmt: skip
    limit = knee.combine(climb, rows)
    assert (limit["users"], limit["criterion"], limit["step"]) == (3100, "unresponsive (...)", 7)
    assert (limit["last_ok_users"], limit["last_ok_step"]) == (2800, 9)
    assert limit["bracket_ratio"] == pytest.approx(3100 / 2800)
    assert limit["narrowing"] == "open"
    stopped = knee.combine(climb, [_narrow(6, 3100, "invalid", "load generator CPU")])
    assert stopped["narrowing"] == "stopped"
    assert (stopped["users"], stopped["last_ok_users"]) == (3800, 2550)
    base_broke = _narrow(6, 2550, "limit", "refused (...)", phase="base")
    assert "not counted: on its way to the level it was to probe, it breached at 2,550" in (
        knee.say_if_not_counted(base_broke, climb).reason
    )
    for not_tested in (base_broke, _narrow(6, 3100, "limit", "refused", connections=2000)):
        after = knee.combine(climb, [not_tested, _narrow(7, 3100, "limit", "refused")])
        assert after["narrowing"] == "stopped"
        assert (after["users"], after["last_ok_users"]) == (3800, 2550)
    broke = _narrow(6, 3100, "limit", "refused", connections=2000)
    assert (
        "not counted: it broke on its way up at 2,000"
        in knee.say_if_not_counted(broke, climb).reason
    )
    not_reached = {**climb, "reached": False, "users": None}
    assert knee.combine(not_reached, [])["narrowing"] == "none"


@pytest.mark.timeout(300)
def test_narrowing_repeats_the_last_good_level_then_probes_on_fresh_servers(tmp_path):
    """A real knee search (async server refusing past 30 connections, real Locust): the
    climb breaks at 40 users, and each narrowing run, on a fresh server, first climbs
    gently to the last good level and holds it, then probes; the bracket ends around the
    true limit."""
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.compare", "--profile", "smoke", "--servers", "async",
         "--step-start", "10", "--growth", "2", "--step-max", "40", "--step-time", "4",
         "--window", "3", "--spawn-rate", "40", "--precision", "0.11", "--probe-time", "0",
         "--server-cpus", "none", "--server-arg=--max-connections", "--server-arg=30",
         "--out", str(out), "--quiet"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = json.loads((out / "summary.json").read_text())["servers"]["async"]
    rows = run["steps"]
    assert [r["users_target"] for r in rows if r["phase"] == "climb"] == [10, 20, 40]
    narrowing = [r for r in rows if r["phase"] in ("base", "narrow")]
    assert narrowing, "the climb's bracket 20-40 must be narrowed"
    last_ok = 20
    for base, probe in zip(narrowing[::2], narrowing[1::2], strict=True):
        assert (base["phase"], probe["phase"]) == ("base", "narrow")
        assert base["users_target"] == last_ok and base["run"] == probe["run"]
        assert base["run"].startswith("async-narrow-") and base["outcome"] == "ok"
        if probe["outcome"] == "ok":
            last_ok = probe["users_target"]
    # The ramp to the last good level is gentler than a step's: a quarter of 40 users/s.
    assert {n["first_spawn_rate"] for n in run["narrowing"]} == {10.0}
    limit = run["limit"]
    assert limit["last_ok_users"] == last_ok
    assert last_ok <= 30 < limit["users"] <= 40
    assert limit["users"] / last_ok <= 1.11 + 0.01 or limit["narrowing"] == "stopped"


def test_the_report_explains_a_limit_from_its_own_figures():
    """The why-it-broke text quotes the CPU, waiting and switch figures of the last good
    and the breached step, and reads "out of CPU" only when the budget was used up."""
    good = _row(0, 1000, cpu_cores_exact=0.30, wait_to_run_per_s=0.1, threads=1002,
                deliveries_per_s=5000.0)  # fmt: skip
    bad = _row(1, 1500, cpu_cores_exact=0.49, wait_to_run_per_s=2.5, threads=1503,
               deliveries_per_s=5000.0, rss_bytes=2**27, open_fds=1510, connections=1500,
               outcome=steps.Outcome.LIMIT, criterion=steps.Criterion.SLO,
               reason="p99 over SLO")  # fmt: skip
    run = {"kind": "threaded", "server_cpus": 0.5, "pinning": {"server_cpu": 0},
           "steps": [good, bad], "locust_failures": [],
           "limit": {"reached": True, "users": 1500, "criterion": "p99 over SLO",
                     "step": 1, "last_ok_users": 1000, "last_ok_step": 0}}  # fmt: skip
    why = diagnosis.explain(run, cpus=2)
    assert why["reading"] == "out of CPU"
    assert "0.30 → 0.49 cores of the 0.5 it was given" in why["text"]
    assert "its 1,503 threads spent 0.10 → 2.50 s per second waiting to run" in why["text"]
    spare = diagnosis.explain({**run, "server_cpus": None}, cpus=2)  # pinned: one core given
    assert spare["reading"] == "not out of CPU"


BUSY_SECOND = "import time\nend = time.time() + 1\nwhile time.time() < end: pass"


@pytest.mark.skipif(cpubudget.available() is not None, reason="no writable cgroup CPU controller")
def test_a_cpu_budget_throttles_a_busy_process_and_is_removed():
    """A process started inside a 0.2-CPU budget is throttled by the kernel (the group's
    own counters say so), and the group is gone after remove()."""
    budget = cpubudget.CpuBudget.create(0.2, "twinchat-test")
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time\nend = time.time() + 1\nwhile time.time() < end: pass",
            ],
            preexec_fn=budget.enter,
        )
        proc.wait(timeout=30)
        periods, seconds = budget.throttled()
        assert periods > 0 and seconds > 0
    finally:
        budget.remove()
    assert not budget.path.exists()


def test_the_runner_imports_no_locust():
    """Locust's import patches the whole process with gevent: the runner, its
    report, the benchmarks that run it and the tests that import them must not pull
    it in."""
    modules = ["loadtest.compare.__main__", "loadtest.compare.knee", "loadtest.stepplan",
               "loadtest.capacity_bench", "loadtest.soak"]  # fmt: skip
    code = f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; " + (
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    )
    assert out.stdout.strip() == "[]"


def test_a_wall_is_named_from_its_own_evidence():
    """The report's sentence for a wall quotes the refusals by reason, the threads held, the
    server's own warning and the kernel's refused thread starts, from the run that hit it."""
    row = _row(3, 31000, run="threaded-narrow-31000", rejected={"threads": 412.0},
               threads=30610.0, connections=30570.0)  # fmt: skip
    warning = (
        "2026-12-03 07:00:00,000 WARNING twinchat.threaded: cannot start a thread (can't start "
        "new thread) with 5102 threads and 5095 connections; refusing new connections with 503"
    )
    run = {
        "name": "threaded", "workers": 6, "steps": [row],
        "limit": {"reached": True, "users": 31000, "criterion": "refused (412 rejected)",
                  "step": 3},
        "wall": {"last_warning": None, "task_cap": None},
        "narrowing": [{"name": "threaded-narrow-31000", "locust_failures": [],
                       "wall": {"last_warning": warning, "task_cap": 30675,
                                "task_cap_refusals": 412}}],
    }  # fmt: skip
    text = walls.describe(run, {"pid_max": 32768, "threads_max": 192726, "cpus": 2})
    assert "refused (412 rejected) at 31,000 users" in text
    assert "threads 412" in text and "30,610 threads" in text
    assert "cannot start a thread (can't start new thread) with 5102 threads" in text
    assert "refused 412 thread starts at the task cap of 30,675" in text
    assert walls.describe({**run, "limit": {"reached": False}}, {}) is None


def test_a_step_row_reads_back_from_summary_json_of_this_and_older_versions():
    """A row survives to_dict/from_dict unchanged; a row written before the criterion was
    stored gets it from its words, and keys a row no longer has are dropped."""
    row = _row(2, 300, outcome=steps.Outcome.LIMIT, criterion=steps.Criterion.REFUSED,
               reason="refused (3 rejected)", rejected={"capacity": 3.0})  # fmt: skip
    assert steps.StepRow.from_dict(json.loads(json.dumps(row.to_dict()))) == row
    old = {k: v for k, v in row.to_dict().items() if k not in ("criterion", "tcp_sockets")}
    old["retired_figure"] = 1.0
    read = steps.StepRow.from_dict(json.loads(json.dumps(old)))
    assert read.criterion == steps.Criterion.REFUSED and read.outcome == steps.Outcome.LIMIT
    assert read.tcp_sockets is None
