"""Soak benchmark (not a test): the chat scenario for a long time, watching for drift.

    python -m loadtest.soak --server threaded --users 1000 --duration 600
    python -m loadtest.soak --server async            # users: half the limit `make compare` found

A soak is a one-step run of the comparison runner
(:func:`loadtest.compare.runner.run_server`): a fresh server on CPU 0 and one
Locust process on CPU 1 (where ``taskset`` exists and there are two CPUs or
more) running the ``chat`` scenario, ``--users`` users in rooms of
``--room-size``, each saying ``--text-size`` characters every ``--say-every``
seconds. Locust's users check what they receive (seq per room +1 with no gap
or duplicate, no error frame, no close they did not ask for) and count every
breach as a failure, by kind. The runner samples the server's /metrics and
Locust every second; the step is held ``--warmup`` + ``--duration`` seconds
after its ramp and judged, by the comparison's step rules, on its last
``--duration`` seconds: the steady period.

The report compares the first steady sample with the last: RSS, open fds and
threads at the start and the end, their change and the slope of a
least-squares line through every steady sample (:func:`drift`; RSS in MiB per
hour), the messages the server received and delivered, the fan-out latency
Locust saw, and every failure, counted by kind. It is printed and written to
reports/soak-<server>-<timestamp>/soak.json and soak.md, beside the runner's
raw files (``<server>-samples.jsonl``, Locust's CSVs and log, the server's log).

Default users: half of the server's limit in reports/latest/summary.json (the
``make compare`` report) when it names one, else ``--fallback-users``.
Everything is bounded: ramp, warmup, ``--duration``, then Locust stops its
users and the server gets SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from loadtest import fit, machine
from loadtest.compare import runner
from loadtest.compare.profiles import Profile
from loadtest.compare.steps import StepRow, at
from loadtest.serverproc import PROJECT_ROOT

MIB = 1024 * 1024
DRIFTING = ("rss", "fds", "threads")  # the server figures whose drift a soak reports


def drift(samples: list[dict], start: float, end: float) -> dict:
    """RSS, open fds and threads of the server over ``[start, end]``: the first and last
    steady values, their change, and the least-squares slope per hour (None without
    two samples)."""
    steady = [s for s in samples if start <= s["t"] <= end and s.get("server")]
    out = {}
    for key in DRIFTING:
        points = [(s["t"], s["server"][key]) for s in steady if s["server"].get(key) is not None]
        slope = fit.slope(points)
        first, last = (points[0][1], points[-1][1]) if points else (None, None)
        out[key] = {
            "start": first,
            "end": last,
            "change": None if first is None else last - first,
            "per_hour": None if slope is None else slope * 3600,
        }
    return out


def _view(sample: dict | None) -> dict:
    """A sample as soak.json keeps it: the server's RSS, fds, threads and connections,
    and the load generator's CPU."""
    server = (sample or {}).get("server") or {}
    return {
        "t": (sample or {}).get("t"),
        "rss": server.get("rss"),
        "fds": server.get("fds"),
        "threads": server.get("threads"),
        "connections": server.get("connections"),
        "client_cpu_percent": (sample or {}).get("locust_cpu"),
    }


def _count(a: dict | None, b: dict | None, key: str) -> float | None:
    """A server counter's growth between two samples."""
    x = ((a or {}).get("server") or {}).get(key)
    y = ((b or {}).get("server") or {}).get(key)
    return None if x is None or y is None else y - x


def soak(args: argparse.Namespace, out: Path) -> dict:
    """Run the soak (one step of the comparison runner) and reduce it to soak.json's figures."""
    hold = args.warmup + args.duration
    prof = Profile(
        "soak", start=args.users, growth=1.0, maximum=args.users, step_time=hold,
        window=args.duration, spawn_rate=args.spawn_rate, climb=(args.users,),
    )  # fmt: skip
    locust_args = ["--room-size", str(args.room_size), "--say-every", f"{args.say_every:g}",
                   "--text-size", str(args.text_size)]  # fmt: skip
    options = runner.RunOptions(
        prof, "chat", out, runner.Pinning.one_locust(), locust_args, list(args.server_args),
        progress_every=args.sample_every, label="soak",
    )  # fmt: skip
    result = runner.run_server(args.server, options)
    if not result["steps"]:
        raise SystemExit(f"soak: the run ended before its step ({result['stop_reason']})")
    row: StepRow = result["steps"][-1]
    path = out / f"{result['name']}-samples.jsonl"
    samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steady_from = row.judged_from if row.judged_from is not None else row.end - args.duration
    steady = [s for s in samples if steady_from <= s["t"] <= row.end]
    answered = [s for s in steady if s.get("server")] or [None]
    first, last = answered[0], answered[-1]
    thinned = [s for i, s in enumerate(samples) if i % max(1, round(args.sample_every)) == 0]
    baseline = result["baseline"] or {}
    start = _view(first)
    held = max(1.0, start["connections"] or args.users)
    failures = {**row.failures_by_name, **{f"server disconnect: {k}": v
                for k, v in row.disconnects.items() if k != "client_close"}}  # fmt: skip
    changes = drift(samples, steady_from, row.end)
    return {
        "users": args.users,
        "room_size": args.room_size,
        "say_every": args.say_every,
        "duration_s": round(row.end - steady_from, 1),
        "ramp_s": round((row.judged_from or row.end) - row.start - args.warmup, 1),
        "baseline": {key: baseline.get(key) for key in ("rss", "fds", "threads", "connections")},
        "start": start,
        "end": _view(last),
        "drift": changes,
        "rss_drift_mib": round((changes["rss"]["change"] or 0) / MIB, 2),
        "rss_slope_mib_per_hour": round((changes["rss"]["per_hour"] or 0) / MIB, 2),
        "rss_per_connection_kib": round(
            ((start["rss"] or 0) - (baseline.get("rss") or 0)) / held / 1024, 1
        ),
        "said": _count(first, last, "received"),
        "delivered": _count(first, last, "delivered"),
        "received": _received(at(samples, steady_from, "locust"), at(samples, row.end, "locust")),
        "fanout_p50_ms": _round(row.latency_p50_ms),
        "fanout_p99_ms": _round(row.latency_p99_ms),
        "failures": {k: v for k, v in failures.items() if v},
        "client_cpu_percent_max": max(
            (s["locust_cpu"] for s in steady if s.get("locust_cpu") is not None), default=None
        ),
        "step": {"outcome": row.outcome, "reason": row.reason, "settled": row.settled},
        "exit_code": result["server_exit"],
        "samples": [_view(s) for s in thinned],
    }


def _received(a: dict | None, b: dict | None) -> float | None:
    """Messages Locust's users received between two samples (fan-out copies and acks)."""
    if not a or not b:
        return None
    before, after = a["locust"]["requests"], b["locust"]["requests"]
    return sum(after.get(name, 0.0) - before.get(name, 0.0) for name in ("fanout", "ack"))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def users_from_compare(kind: str, summary: Path) -> int | None:
    """Half the limit (users) `make compare` found for ``kind``, if it found one."""
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        return None
    if data.get("scenario") != "chat":
        return None
    for row in data.get("headline", []):
        if row.get("server") == kind and row.get("limit_users"):
            return int(row["limit_users"]) // 2
    return None


def markdown(kind: str, result: dict, date: str) -> str:
    s, e, d = result["start"], result["end"], result["drift"]
    failures = ", ".join(f"{k}: {v:,.0f}" for k, v in result["failures"].items()) or "none"
    step = result["step"]
    minutes = round(result["duration_s"] / 60, 1)  # the judged window: 119.2 s is "2 min"
    return "\n".join([
        f"### Soak, {kind} server ({date})",
        "",
        f"{result['users']} users ({result['users_source']}), rooms of {result['room_size']}, "
        f"one message every {result['say_every']:g} s each, {minutes:g} min "
        f"steady after a {result['ramp_s']:.0f} s ramp.",
        "",
        "| | start | end | slope |",
        "|---|---|---|---|",
        f"| RSS | {_mib(s['rss'])} MiB | {_mib(e['rss'])} MiB "
        f"| {_per_hour(d['rss']['per_hour'], MIB)} MiB/h |",
        f"| open fds | {_n(s['fds'])} | {_n(e['fds'])} | {_per_hour(d['fds']['per_hour'])}/h |",
        f"| threads | {_n(s['threads'])} | {_n(e['threads'])} "
        f"| {_per_hour(d['threads']['per_hour'])}/h |",
        f"| connections | {_n(s['connections'])} | {_n(e['connections'])} | |",
        "",
        f"RSS drift {result['rss_drift_mib']:+.1f} MiB (slope "
        f"{result['rss_slope_mib_per_hour']:+.1f} MiB/h); {_n(result['said'])} messages said, "
        f"{_n(result['delivered'])} delivered (server counts), {_n(result['received'])} "
        f"received by Locust; fanout p50 {result['fanout_p50_ms']} ms, p99 "
        f"{result['fanout_p99_ms']} ms; failures: {failures}; load generator CPU at most "
        f"{_n(result['client_cpu_percent_max'])}%; step {step['outcome']}"
        + (f" ({step['reason']})" if step["reason"] else "")
        + ".",
        "",
    ])  # fmt: skip


def _n(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f}"


def _per_hour(value: float | None, unit: float = 1.0) -> str:
    return "n/a" if value is None else f"{value / unit:+.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=["threaded", "async"], required=True)
    parser.add_argument("--users", type=int, help="default: half the compare limit")
    parser.add_argument("--fallback-users", type=int, default=2000)
    parser.add_argument("--compare-summary", type=Path,
                        default=PROJECT_ROOT / "reports/latest/summary.json")  # fmt: skip
    parser.add_argument("--room-size", type=int, default=25)
    parser.add_argument("--say-every", type=float, default=5.0)
    parser.add_argument("--text-size", type=int, default=40)
    parser.add_argument("--duration", type=float, default=600.0, help="steady seconds")
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--spawn-rate", type=int, default=200)
    parser.add_argument(
        "--sample-every", type=float, default=15.0,
        help="seconds between progress lines and between the samples soak.json keeps",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports")
    parser.add_argument("server_args", nargs="*", help="extra server flags, after --")
    args = parser.parse_args(argv)
    source = "--users"
    if args.users is None:
        args.users = users_from_compare(args.server, args.compare_summary)
        source = f"half the limit in {args.compare_summary.name}"
        if args.users is None:
            args.users = args.fallback_users
            source = "no compare limit found: --fallback-users"
    date = time.strftime("%Y-%m-%d %H:%M")
    out = args.out / f"soak-{args.server}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"soak {args.server}: {args.users} users ({source}), {args.duration:.0f} s", flush=True)
    result = soak(args, out)
    result.update(server=args.server, users_source=source, date=date,
                  machine=machine.one_line())  # fmt: skip
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    md = markdown(args.server, result, date)
    (out / "soak.md").write_text(md)
    print(md)
    failed = sum(result["failures"].values()) or result["exit_code"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
