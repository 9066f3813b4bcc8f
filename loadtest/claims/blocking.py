"""The blocking-library scenario: every say makes a synchronous HTTP call first.

Each server runs with ``--moderation-url`` pointing at a local moderation
service (:class:`loadtest.moderation.ModerationService`, started by the run)
that answers after ``N`` ms, for each ``N`` of :data:`DELAYS_MS`, under the
same fixed load: :data:`USERS` chat users in rooms of 25, each saying something
every :data:`SAY_EVERY` s (so about ``USERS / SAY_EVERY`` calls per second).
Three variants: the threaded server (the call in the sender's thread,
outside ``chat_lock``), the async server with the call on its event loop as
written (``--screen-in loop``), and with the call in a worker thread
(``--screen-in thread``). Each (variant, N) is a fresh server, held
:data:`HOLD_S` s after the ramp and judged on its last :data:`WINDOW_S` s,
server pinned to CPU 0 and Locust on CPU 1 as in ``make compare``, no CPU
budget.

What each point reads: the bystanders' fan-out p99 (Locust's ``fanout``:
receive time minus the sender's ``sent_at``, at every member but the sender),
which includes the sender's own call of N ms and whatever that call costs
beyond N (connect, the service's own tail); the round-trip p99 of a bystander
that makes no blocking call at all (:mod:`loadtest.claims.probe`: a separate
client pinging the server every 0.1 s), which is what others' blocking calls
cost a request that needs none; and the async server's event-loop lag p99.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.claims import probe
from loadtest.compare import figures, runner
from loadtest.compare.steps import StepRow
from loadtest.moderation import ModerationService
from loadtest.serverproc import PROJECT_ROOT, ServerProcess, stop_process

DELAYS_MS = (0, 5, 20, 50)
USERS = 1000
SAY_EVERY = 10.0  # s between two says of one user: USERS / SAY_EVERY calls per second
HOLD_S = 20.0
WINDOW_S = 8.0  # the last seconds of the hold: every user has spoken at least once by then


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str
    server_args: tuple[str, ...]
    tag: str  # run names: <kind><tag>-<N>ms
    where: str  # where the blocking call runs, in words


VARIANTS = (
    Variant("threaded", "threaded", (), "-blocking", "in the sender's thread, outside chat_lock"),
    Variant("async", "async", ("--screen-in", "loop"), "-loop", "on the event loop, as written"),
    Variant(
        "async+thread", "async", ("--screen-in", "thread"), "-thread",
        "in a worker thread (asyncio.to_thread)",
    ),
)  # fmt: skip


def locust_args(say_every: float = SAY_EVERY) -> list[str]:
    return ["--say-every", f"{say_every:g}"]


def run(
    options: runner.RunOptions,
    *,
    users: int = USERS,
    delays_ms: tuple[float, ...] = DELAYS_MS,
) -> dict:
    """Run every variant at every delay; return the points and the raw runs' rows."""
    points = []
    with ModerationService() as service:
        for variant in VARIANTS:
            for delay in delays_ms:
                service.delay_ms = delay
                calls_before = service.requests
                tag = f"{variant.tag}-{delay:g}ms"
                pings = options.out_dir / f"{variant.kind}{tag}-probe.txt"
                with Probe(pings) as bystander:
                    result = runner.run_server(
                        variant.kind,
                        options,
                        levels=[users],
                        tag=tag,
                        server_args=["--moderation-url", service.url, *variant.server_args],
                        on_start=bystander.start,
                    )
                row = result["steps"][-1] if result["steps"] else None
                points.append(point(variant, delay, row, service.requests - calls_before, result))
                points[-1].update(probe_figures(options.out_dir, points[-1]))
    return {
        "users": users,
        "delays_ms": list(delays_ms),
        "variants": [asdict(v) for v in VARIANTS],
        "points": points,
    }


class Probe:
    """The bystander probe (:mod:`loadtest.claims.probe`) in a process of its own,
    started once the server serves and stopped when the ``with`` block ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen | None = None

    def start(self, server: ServerProcess) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.claims.probe", server.url, str(self.path)],
            cwd=PROJECT_ROOT,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 5.0)


def probe_figures(out: Path, point: dict) -> dict:
    """The bystander probe's p99 over the step's judged window, or, when no ping was sent
    in it (a step cut short while the loop was blocked), over the step after its ramp."""
    row = point.get("step")
    path = out / f"{point['run']}-probe.txt"
    if not row:
        return {"probe_p99_ms": None, "probe_pings": 0, "probe_window": None}
    rtts, window = probe.read(path, row["judged_from"], row["end"]), "judged window"
    if not rtts:
        rtts, window = probe.read(path, row["ramp_end"], row["end"]), "step after its ramp"
    ping = probe.p99(rtts)
    return {
        "probe_p99_ms": None if ping is None else 1000 * ping,
        "probe_pings": len(rtts),
        "probe_window": window,
    }


def point(variant: Variant, delay: float, row: StepRow | None, calls: int, result: dict) -> dict:
    """One (variant, N) reduced to what the plot and the verdicts read (the probe's
    figures are added by :func:`probe_figures`); ``step`` is the row as summary.json
    stores it."""
    p99 = figures.p99(row)
    return {
        "variant": variant.name,
        "delay_ms": delay,
        "run": result["name"],
        "calls": calls,
        "fanout_p99_ms": p99,
        "fanout_p50_ms": figures.p50(row),
        "extra_p99_ms": None if p99 is None else max(0.0, p99 - delay),
        "loop_lag_p99_ms": row.loop_lag_p99_ms if row else None,
        "deliveries_per_s": row.deliveries_per_s if row else None,
        "server_cpu_cores": row.cpu_cores_exact if row else None,
        "threads": row.threads if row else None,
        "failure_ratio": row.failure_ratio if row else None,
        "dropped": row.dropped if row else None,
        "outcome": row.outcome if row else "no step",
        "reason": row.reason if row else result.get("stop_reason"),
        "step": row.to_dict() if row else None,
    }
