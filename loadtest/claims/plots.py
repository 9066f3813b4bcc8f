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


def _line(ax, xs, ys, oks, style) -> None:
    ax.plot(xs, ys, color=style["color"], label=style["label"])
    for x, y, ok in zip(xs, ys, oks, strict=True):
        ax.plot(x, y, marker=style["marker"], color=style["color"],
                markerfacecolor=style["color"] if ok else "white")  # fmt: skip


def blocking(result: dict, path: Path) -> None:
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(SIZE[0] + 7, SIZE[1]))
    delays = result["delays_ms"]
    for name, style in VARIANT_STYLE.items():
        points = [p for p in result["points"] if p["variant"] == name]
        got = [p for p in points if p["fanout_p99_ms"] is not None]
        _line(left, [p["delay_ms"] for p in got], [p["fanout_p99_ms"] for p in got],
              [p["outcome"] == "ok" for p in got], style)  # fmt: skip
        pings = [p for p in points if p.get("probe_p99_ms") is not None]
        _line(middle, [p["delay_ms"] for p in pings], [p["probe_p99_ms"] for p in pings],
              [p["outcome"] == "ok" for p in pings], style)  # fmt: skip
        lag = [p for p in points if p.get("loop_lag_p99_ms") is not None]
        if name != "threaded" and lag:
            lags = [max(p["loop_lag_p99_ms"], 0.1) for p in lag]  # log scale: no zero
            _line(right, [p["delay_ms"] for p in lag], lags,
                  [p["outcome"] == "ok" for p in lag], style)  # fmt: skip
    waits = [d for d in delays if d > 0]  # log scale: N = 0 has no point
    left.plot(waits, waits, color="0.5", linestyle=":", label="N: the sender's own wait")
    for ax in (left, middle, right):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.set_xlabel("moderation service delay N (ms)")
        ax.set_xticks(delays)
        ax.grid(True, alpha=0.3)
    left.set_title(f"Bystanders' fan-out p99, {result['users']:,} chat users", fontsize=10)
    left.set_ylabel("fan-out p99 (ms, log scale)")
    middle.set_title("Ping p99 of a bystander that makes no call", fontsize=10)
    middle.set_ylabel("ping round trip p99 (ms, log scale)")
    middle.legend(fontsize=8, loc="upper left")
    right.set_title("Async server's event-loop lag p99", fontsize=10)
    right.set_ylabel("loop lag p99 (ms, log scale)")
    left.legend(fontsize=8, loc="upper left")
    right.legend(fontsize=8, loc="upper left")
    _legend_note(left, HOLLOW_NOTE)
    _save(fig, path)


def cpubound(result: dict, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(SIZE[0] + 3, SIZE[1]))
    offered = sorted({p["says_per_s_offered"] for p in result["points"]})
    for kind in ("threaded", "async"):
        style = STYLE[kind]
        points = [p for p in result["points"] if p["server"] == kind]
        cpu = [p for p in points if p["cpu_cores_exact"] is not None]
        _line(left, [p["says_per_s_offered"] for p in cpu], [p["cpu_cores_exact"] for p in cpu],
              [p["outcome"] == "ok" for p in cpu], style)  # fmt: skip
        says = [p for p in points if p["says_per_s"] is not None]
        _line(right, [p["says_per_s_offered"] for p in says], [p["says_per_s"] for p in says],
              [p["outcome"] == "ok" for p in says], style)  # fmt: skip
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
