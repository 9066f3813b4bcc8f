"""The claims scenarios' plots, in the comparison's conventions (loadtest.compare.plots).

Threaded in orange with circles, async in blue with squares, async with the
call in a worker thread in green with diamonds; a hollow marker is a point
whose step was not ok (over the SLO, unresponsive, ...).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from loadtest.compare.plots import SIZE, STYLE, _legend_note, _save

VARIANT_STYLE = {
    "threaded": STYLE["threaded"],
    "async": {**STYLE["async"], "label": "async (call on the loop)"},
    "async+thread": {"color": "tab:green", "marker": "D", "label": "async (asyncio.to_thread)"},
}
PLOTS = {
    "blocking.png": "Blocking library call in every say: bystanders' fan-out p99, a "
    "bystander's ping p99 and event-loop lag vs the call's delay N",
    "cpubound.png": "Pure-Python work in every say: cores used and deliveries/s vs say rate",
}
HOLLOW_NOTE = "hollow: step not ok (over the SLO, unresponsive, failures)"


def _line(ax, points: list[dict], x: str, y: str, style: dict, floor: float | None = None) -> None:
    """``y`` against ``x`` over the points that have a ``y``, hollow where the step was not
    ok; values below ``floor`` (a log scale's stand-in for zero) drawn at ``floor``."""
    got = [p for p in points if p.get(y) is not None]
    ys = [p[y] if floor is None else max(p[y], floor) for p in got]
    ax.plot([p[x] for p in got], ys, color=style["color"], label=style["label"])
    for p, value in zip(got, ys, strict=True):
        ax.plot(p[x], value, marker=style["marker"], color=style["color"],
                markerfacecolor=style["color"] if p["outcome"] == "ok" else "white")  # fmt: skip


def blocking(result: dict, path: Path) -> None:
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(SIZE[0] + 7, SIZE[1]))
    delays = result["delays_ms"]
    for name, style in VARIANT_STYLE.items():
        points = [p for p in result["points"] if p["variant"] == name]
        _line(left, points, "delay_ms", "fanout_p99_ms", style)
        _line(middle, points, "delay_ms", "probe_p99_ms", style)
        if name != "threaded" and any(p.get("loop_lag_p99_ms") is not None for p in points):
            _line(right, points, "delay_ms", "loop_lag_p99_ms", style, floor=0.1)
    waits = [d for d in delays if d > 0]  # log scale: N = 0 has no point
    left.plot(waits, waits, color="0.5", linestyle=":", label="N: the sender's own wait")
    for ax in (left, middle, right):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.set_xlabel("moderation service delay N (ms)")
        ax.set_xticks(delays)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    left.set_title(f"Bystanders' fan-out p99, {result['users']:,} chat users", fontsize=10)
    left.set_ylabel("fan-out p99 (ms, log scale)")
    middle.set_title("Ping p99 of a bystander that makes no call", fontsize=10)
    middle.set_ylabel("ping round trip p99 (ms, log scale)")
    right.set_title("Async server's event-loop lag p99", fontsize=10)
    right.set_ylabel("loop lag p99 (ms, log scale)")
    _legend_note(left, HOLLOW_NOTE)
    _save(fig, path)


def cpubound(result: dict, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(SIZE[0] + 3, SIZE[1]))
    offered = sorted({p["says_per_s_offered"] for p in result["points"]})
    for kind in ("threaded", "async"):
        points = [p for p in result["points"] if p["server"] == kind]
        _line(left, points, "says_per_s_offered", "cpu_cores_exact", STYLE[kind])
        _line(right, points, "says_per_s_offered", "says_per_s", STYLE[kind])
    demand = [x * result["say_cpu_ms"] / 1000 for x in offered]
    left.plot(offered, demand, color="0.5", linestyle=":", label="work offered (cores)")
    left.axhline(1.0, color="red", linewidth=1, linestyle=":", label="one core")
    left.axhline(result["cpus"], color="black", linewidth=1, linestyle="--",
                 label=f"the machine ({result['cpus']} CPUs)")  # fmt: skip
    right.plot(offered, offered, color="0.5", linestyle=":", label="says offered")
    right.axhline(1000 / result["say_cpu_ms"], color="red", linewidth=1, linestyle=":",
                  label="one core's worth of filtering")  # fmt: skip
    left.set_title(f"Server CPU (sum of its threads), {result['say_cpu_ms']:g} ms of Python "
                   "per say", fontsize=10)  # fmt: skip
    left.set_ylabel("cores")
    right.set_title("Says received per second (server counter)", fontsize=10)
    right.set_ylabel("says / s")
    for ax in (left, right):
        ax.set_xlabel("says offered per second")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    _legend_note(right, HOLLOW_NOTE)
    _save(fig, path)
