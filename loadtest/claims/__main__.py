"""``python -m loadtest.claims``: the claims scenarios, their verdicts and a report.

    python -m loadtest.claims                      # all: blocking, cpu, shared (~7.5 min here)
    python -m loadtest.claims --only blocking
    python -m loadtest.claims --profile smoke      # about a minute (the test)
    python -m loadtest.claims --render DIR         # redraw DIR's report from its summary.json

``make claims [CLAIMS_ARGS=...]`` runs this. The report goes to
``reports/claims/<timestamp>/`` (``reports/claims/latest`` points at it); the
claims the chat climb tests are taken from ``--compare DIR`` (default: the
newest ``make compare`` report, ``reports/latest``). See docs/claims.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from loadtest import codefacts, machine
from loadtest.claims import blocking, cpubound, report, sharedstate, verdicts
from loadtest.compare import runner
from loadtest.compare.__main__ import _link_latest
from loadtest.compare.profiles import Profile
from loadtest.serverproc import PROJECT_ROOT

PARTS = ("blocking", "cpu", "shared")
SMOKE = {"users": 60, "delays": (0, 20), "hold": 6.0, "window": 4.0, "cpu_levels": (4, 8)}
# The shared-state experiment's runs: (chat_lock kept, switch interval in s).
SHARED_RUNS = ((True, sharedstate.DEFAULT_SWITCH_INTERVAL),
               (False, sharedstate.DEFAULT_SWITCH_INTERVAL), (False, 1e-6))  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.claims",
        description="Test the article's claims about blocking libraries, the GIL and shared "
        "state, each with a scenario built for it; write a report.",
    )
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {PARTS}")
    parser.add_argument("--profile", choices=("full", "smoke"), default="full")
    parser.add_argument("--reports", type=Path, default=PROJECT_ROOT / "reports" / "claims")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--compare", type=Path, default=PROJECT_ROOT / "reports" / "latest",
        help="a make compare report whose claims complete the table",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--render", type=Path, metavar="DIR", help="only redraw DIR's report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        summary = json.loads((args.render / "summary.json").read_text())
        for point in (summary.get("blocking") or {}).get("points", []):
            point.update(blocking.probe_figures(args.render, point))  # from its raw pings
        summary["claims"] = _claims(summary, args.compare)
        report.write(args.render, summary)
        print(report.claims_markdown(summary["claims"]))
        return 0
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--only: unknown {sorted(unknown)}; choose from {PARTS}")
    smoke = args.profile == "smoke"
    out = args.out or args.reports / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    summary: dict = {
        "format": 1,
        "command": [Path(sys.executable).name, "-m", "loadtest.claims", *(argv or sys.argv[1:])],
        "profile": args.profile,
        "machine": machine.describe(runner.Pinning.choose(True).as_dict(), PROJECT_ROOT),
        "thresholds": verdicts.THRESHOLDS,
        "code": codefacts.facts(PROJECT_ROOT),
        "blocking": None,
        "cpubound": None,
        "shared": None,
    }
    summary["date"] = summary["machine"]["date"]
    if "shared" in parts:
        summary["shared"] = {"runs": [_shared(locked, si) for locked, si in SHARED_RUNS]}
        report.write_summary(out, summary)
    if "blocking" in parts:
        options = _options(out, "blocking", smoke, args.quiet)
        summary["blocking"] = blocking.run(
            options,
            users=SMOKE["users"] if smoke else blocking.USERS,
            delays_ms=SMOKE["delays"] if smoke else blocking.DELAYS_MS,
        )
        report.write_summary(out, summary)
    if "cpu" in parts:
        options = _options(out, "cpu", smoke, args.quiet)
        summary["cpubound"] = cpubound.run(
            options, levels=SMOKE["cpu_levels"] if smoke else cpubound.LEVELS
        )
    summary["seconds"] = round(time.monotonic() - began)
    summary["claims"] = _claims(summary, args.compare)
    report.write(out, summary)
    _link_latest(args.reports, out)
    if not args.quiet:
        print(f"[claims] done in {summary['seconds']} s: {out / 'report.html'}")
        print(report.claims_markdown(summary["claims"]))
    return 0


def _claims(summary: dict, compare_dir: Path) -> list[dict]:
    path = compare_dir / "summary.json"
    if not path.exists():
        return report.table(summary, None, None)
    return report.table(summary, json.loads(path.read_text()), compare_dir.resolve().name)


def _options(out: Path, part: str, smoke: bool, quiet: bool) -> runner.RunOptions:
    """Run options of the blocking or the CPU-bound scenario: one fixed load per run."""
    if part == "blocking":
        hold, window, spawn = blocking.HOLD_S, blocking.WINDOW_S, 500.0
        locust_args = blocking.locust_args(2.0 if smoke else blocking.SAY_EVERY)
    else:
        hold, window, spawn = cpubound.HOLD_S, cpubound.WINDOW_S, 50.0
        locust_args = cpubound.locust_args()
    if smoke:
        hold, window = SMOKE["hold"], SMOKE["window"]
    profile = Profile(f"claims-{part}", start=1, growth=2, maximum=1, step_time=hold,
                      window=window, spawn_rate=spawn)  # fmt: skip
    return runner.RunOptions(
        profile, "chat", out, runner.Pinning.choose(True), locust_args, [],
        server_cpus=None, echo=not quiet,
    )  # fmt: skip


def _shared(locked: bool, switch_interval: float) -> dict:
    """One shared-state experiment, in a process of its own (its switch interval, its server)."""
    command = [sys.executable, "-m", "loadtest.claims.sharedstate",
               "--switch-interval", str(switch_interval)]  # fmt: skip
    if not locked:
        command.append("--no-lock")
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:  # reported as such in the table, never counted as a breakage
        return {"locked": locked, "switch_interval": switch_interval, "says_sent": 0,
                "error": done.stderr[-2000:] or f"exit {done.returncode}"}  # fmt: skip
    return json.loads(done.stdout)


if __name__ == "__main__":
    sys.exit(main())
