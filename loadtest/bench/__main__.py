"""``python -m loadtest.bench``: run the benchmark suite and write its report."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

from loadtest import pinning
from loadtest.bench import fixedrate, results
from loadtest.bench.scenarios import SIZES, Pool, Runner
from loadtest.bench.servers import SPEC_BY_NAME, SPECS, UNLIMITED
from loadtest.serverproc import PROJECT_ROOT

SCENARIOS = ("fanout", "fixed-rate", "capacity", "handshake")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "bench")
    parser.add_argument(
        "--servers", default=",".join(s.name for s in SPECS),
        help="comma-separated subset of: " + ", ".join(s.name for s in SPECS),
    )  # fmt: skip
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--receivers", help="comma-separated fan-out sizes instead of the size's own"
    )
    parser.add_argument(
        "--rounds", type=int, help="fan-out runs per server and size (the size's own if unset)"
    )
    parser.add_argument(
        "--profile", action="store_true",
        help="sample each server with py-spy during fan-out (logs/*.pyspy.txt); "
        "the profiler's CPU disturbs the figures",
    )  # fmt: skip
    parser.add_argument(
        "--perf", action="store_true",
        help="perf record -g each server during fixed-rate runs (logs/*.perf.data); "
        "the sampling disturbs the figures",
    )  # fmt: skip
    parser.add_argument("--server-cpu", type=int, default=pinning.SERVER_CPU)
    parser.add_argument("--client-cpu", type=int, default=1)
    args = parser.parse_args(argv)

    sizes = SIZES[args.size]
    if args.receivers:
        sizes = dataclasses.replace(
            sizes, receivers=tuple(int(n) for n in args.receivers.split(","))
        )
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=max(1, args.rounds))
    specs = [SPEC_BY_NAME[name] for name in args.servers.split(",")]
    scenarios = args.scenarios.split(",")
    pinned = pinning.available() and pinning.cpus() > max(args.server_cpu, args.client_cpu)
    server_cpu = args.server_cpu if pinned else None
    client_cpu = args.client_cpu if pinned else None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out / stamp
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pinning.pin_self(client_cpu)  # the coordinator mostly sleeps; keep it off CPU 0

    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "size": args.size,
        **results.context(),
        "pinning": (
            f"server on CPU {server_cpu} (taskset -c {server_cpu}), load client "
            f"({sizes.workers} uvloop processes) and coordinator on CPU {client_cpu}"
            if pinned
            else "not pinned (fewer than 2 CPUs, or no taskset)"
        ),
        "throughput_args": list(UNLIMITED),
        "config": dataclasses.asdict(sizes),
        "servers": {
            spec.name: {"model": spec.model, "protocol": "twinchat v1" if spec.chat else "bare"}
            for spec in specs
        },
        "notes": [],
        "errors": [],
    }
    started = time.monotonic()
    pool = Pool(sizes.workers, client_cpu, sizes.reply_timeout)
    runner = Runner(pool, sizes, logs, server_cpu, profile=args.profile, perf=args.perf)
    try:
        if "fanout" in scenarios:
            _fanout_rounds(result, runner, specs, sizes)
        if "fixed-rate" in scenarios:
            _fixed_rate_rounds(result, runner, specs, sizes)
        for spec in specs:
            entry = result["servers"][spec.name]
            if "handshake" in scenarios:
                hs = _guarded(result, "handshake", runner.handshake, spec)
                if hs is not None:
                    entry["handshake"] = hs
                    _progress(spec.name, "handshake", hs["handshakes_per_s"], "/s")
            if "capacity" in scenarios:
                cap = _guarded(result, "capacity", runner.capacity, spec)
                if cap is not None:
                    entry["capacity"] = cap
                    kib = cap["at_max"].get("rss_kib_per_connection")
                    _progress(spec.name, "capacity", cap["held"], f"held, {kib} KiB/conn")
    finally:
        pool.close()
    result["elapsed_seconds"] = round(time.monotonic() - started, 1)
    result["ratios"] = results.ratios(result["servers"])
    result["targets"] = results.targets(result["servers"])
    fanout = [row for server in result["servers"].values() for row in server.get("fanout", [])]
    if any(row["client_saturated"] for row in fanout):
        result["notes"].append(
            "the load client was saturated in at least one fan-out run: "
            "those deliveries/s are a lower bound"
        )
    result["notes"] += [f"error: {e}" for e in result["errors"]]
    results.write(out_dir, result)
    print((out_dir / "results.md").read_text())
    print(f"written to {out_dir}")
    return 1 if result["errors"] else 0


def _fanout_rounds(result: dict, runner: Runner, specs: list, sizes) -> None:
    """Run every fan-out ``sizes.rounds`` times, servers interleaved within each round.

    This machine's speed drifts over minutes (shared host), so a server and its
    bare reference are measured minutes apart only if run one after the other;
    interleaved, each round compares neighbours in time. Each server's row is
    its median run, with every round's deliveries/s kept in ``rounds``.
    """
    runs: dict[tuple[str, int], list[dict]] = {}
    for n in range(sizes.rounds):
        for receivers in sizes.receivers:
            for spec in specs:
                what = f"fanout {receivers}" + (f" #{n + 1}" if sizes.rounds > 1 else "")
                row = _guarded(result, what, runner.fanout, spec, receivers)
                if row is None:
                    continue
                runs.setdefault((spec.name, receivers), []).append(row)
                _progress(
                    spec.name, what, row["deliveries_per_s"],
                    f"deliv/s (server CPU {row['server_cpu_util']:.0%}, "
                    f"client CPU {row['client_cpu_util']:.0%}, lost {row['lost_connections']})",
                )  # fmt: skip
    for spec in specs:
        rows = [
            results.median_run(runs[spec.name, receivers], "deliveries_per_s")
            for receivers in sizes.receivers
            if (spec.name, receivers) in runs
        ]
        result["servers"][spec.name]["fanout"] = rows


def _fixed_rate_rounds(result: dict, runner: Runner, specs: list, sizes) -> None:
    """Run the fixed-rate scenario ``sizes.rounds`` times, servers interleaved in each round.

    As for the fan-out, a server and its bare reference are compared within a
    round (see :mod:`loadtest.bench.fixedrate`); the order alternates between rounds.
    """
    runs: dict[str, list[dict]] = {}
    measure = functools.partial(fixedrate.run, runner)
    for n in range(sizes.rounds):
        # Every other round runs the servers in reverse: a steady drift of the machine's
        # speed then favours no server over the whole run.
        for spec in specs if n % 2 == 0 else specs[::-1]:
            what = "fixed-rate" + (f" #{n + 1}" if sizes.rounds > 1 else "")
            row = _guarded(result, what, measure, spec, f"{n + 1}")
            if row is None:
                continue
            row["round"] = n + 1
            runs.setdefault(spec.name, []).append(row)
            _progress(
                spec.name, what, row["server_us_per_delivery"],
                f"us/delivery ({row['deliveries_per_s']:,.0f} deliv/s, "
                f"achieved {row['achieved']:.1%}, server CPU {row['server_cpu_util']:.0%}, "
                f"client CPU {row['client_cpu_util']:.0%})",
            )  # fmt: skip
    for name, row in fixedrate.summarize(runs).items():
        result["servers"][name]["fixed_rate"] = row


def _guarded(result: dict, what: str, scenario, spec, *args):
    """Run one scenario; on failure note it in the report and go on with the next."""
    try:
        return scenario(spec, *args)
    except Exception as exc:
        result["errors"].append(f"{spec.name} {what}: {type(exc).__name__}: {str(exc)[:300]}")
        _progress(spec.name, what, "FAILED", str(exc)[:200])
        return None


def _progress(server: str, what: str, value, unit: str) -> None:
    print(f"[bench] {server:14} {what:14} {value} {unit}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
