"""The report's plots: both servers on the same axes, one PNG each (matplotlib, Agg).

Conventions in every plot: threaded in orange with circles, async in blue with
squares; a filled marker is a valid step, a hollow one a step whose load
generator was saturated (invalid), and a cross marks the step at which the
server hit its limit.
"""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, MaxNLocator

from loadtest.compare import figures
from loadtest.compare.steps import StepRow, why_not_counted

STYLE = {
    "threaded": {"color": "tab:orange", "marker": "o", "label": "threaded"},
    "async": {"color": "tab:blue", "marker": "s", "label": "async"},
    # the scale-out run (async on Redis), keyed by run["style"]
    "scale-1": {"color": "tab:green", "marker": "^", "label": "async + Redis, 1 worker"},
    "scale-n": {"color": "tab:purple", "marker": "D", "label": "async + Redis, {n} workers"},
}
DPI = 100
SIZE = (7.5, 4.2)
THOUSANDS = FuncFormatter(lambda v, _pos: f"{v:,.0f}")
THOUSANDS_SHORT = FuncFormatter(lambda v, _pos: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}")

PLOTS = {
    "latency.png": "Fan-out latency (p50, p99) vs users",
    "throughput.png": "Deliveries per second vs users",
    "memory.png": "Resident memory vs connections, and KiB per connection",
    "threads.png": "OS threads vs connections",
    "cpu.png": "Server CPU vs users (and the load generator's)",
    "errors.png": "Failures, refusals, server-side disconnects and dropped messages vs users",
}


def _points(run: dict, x_key: str, y) -> list[tuple]:
    """(x, y, outcome) of one run's steps in order of ``x_key`` (narrowing steps fall between
    climb steps); ``y`` is a row's attribute name or a function of the row."""
    value = y if callable(y) else attrgetter(y)
    climb_limit = run.get("limit") or {}
    points = []
    for r in run["steps"]:
        if r.phase == "base" or why_not_counted(r, climb_limit):
            continue  # a repeat of a climb level, or a probe that never tested its level
        x, v = getattr(r, x_key), value(r)
        if x is not None and v is not None:
            points.append((x, v, r.outcome))
    return sorted(points, key=lambda point: point[0])


def _plot(ax, run: dict, x_key: str, y, *, label_suffix="", linestyle="-", alpha=1.0):
    style = STYLE[run.get("style", run["kind"])]
    points = _points(run, x_key, y)
    if not points:
        return
    xs, ys, _outcomes = zip(*points, strict=True)
    label = style["label"].format(n=run.get("workers", ""))
    ax.plot(xs, ys, color=style["color"], linestyle=linestyle, alpha=alpha,
            label=label + label_suffix)  # fmt: skip
    for x, v, outcome in points:
        ax.plot(
            x, v, marker=style["marker"], color=style["color"], alpha=alpha,
            markerfacecolor="white" if outcome == "invalid" else style["color"],
            markersize=5 if linestyle == "-" else 4,
        )  # fmt: skip
        if outcome == "limit" and linestyle == "-":  # the cross on the main series only
            ax.plot(x, v, marker="x", color="black", markersize=10, mew=2)
        if outcome == "transient" and linestyle == "-":
            ax.plot(x, v, marker="+", color="0.3", markersize=12, mew=1.5)


def _finish(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_formatter(THOUSANDS)
    ax.set_xlim(left=0)


def _slo_on_log_scale(ax, slo_ms: float) -> None:
    """A latency axis: log scale in plain numbers, the SLO a red dotted line."""
    ax.axhline(slo_ms, color="red", linewidth=1, linestyle=":", label=f"SLO {slo_ms:.0f} ms")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))


def _legend(ax, extra_note: str | None = None) -> None:
    handles, _labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, loc="best")
    _legend_note(ax, extra_note)


def _legend_note(ax, note: str | None) -> None:
    if note:
        ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=7, color="0.35", va="bottom")


MARKER_NOTE = (
    "filled: valid step · hollow: load generator saturated · x: limit · "
    "+: breach not confirmed by the next step"
)


def latency(runs: list[dict], slo_ms: float, name: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=SIZE)
    for run in runs:
        _plot(ax, run, "users_target", figures.p99, label_suffix=" p99")
        _plot(ax, run, "users_target", figures.p50, label_suffix=" p50", linestyle="--", alpha=0.6)
    _slo_on_log_scale(ax, slo_ms)
    _finish(ax, f"{name} latency seen by Locust (its last 10 s of each step)", "users",
            f"{name} latency (ms, log scale)")  # fmt: skip
    _legend(ax, MARKER_NOTE)
    _save(fig, path)


def throughput(runs: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=SIZE)
    for run in runs:
        _plot(ax, run, "users_target", "deliveries_per_s", label_suffix=" (server count)")
        _plot(ax, run, "users_target", "fanout_receptions_per_s",
              label_suffix=" (Locust received)", linestyle=":", alpha=0.7)  # fmt: skip
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.set_ylim(bottom=0)
    _finish(ax, "Messages delivered per second (server) and received (Locust)", "users",
            "deliveries / s")  # fmt: skip
    _legend(ax, MARKER_NOTE)
    _save(fig, path)


def memory(runs: list[dict], derived: dict, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(SIZE[0] + 2, SIZE[1]))
    for run in runs:
        _plot(left, run, "connections", lambda r: (r.rss_bytes or 0) / 2**20)
        base = (run.get("baseline") or {}).get("rss") or 0

        def per_conn(r: StepRow, base=base):
            if not r.connections or r.connections < figures.MIN_CONNECTIONS_FOR_SLOPE:
                return None
            return ((r.rss_bytes or 0) - base) / r.connections / 1024

        kib = derived[run["kind"]]["kib_per_connection"]
        _plot(right, run, "connections", per_conn,
              label_suffix=f" (slope {kib:.1f} KiB)" if kib is not None else "")  # fmt: skip
    left.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    _finish(left, "Resident memory (RSS) of the server", "connections", "MiB")
    _finish(right, "(RSS − RSS at start) / connections", "connections", "KiB per connection")
    _legend(left)
    _legend(right)
    _save(fig, path)


def threads(runs: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=SIZE)
    for run in runs:
        _plot(ax, run, "connections", "threads")
    top = max((r.connections or 0 for run in runs for r in run["steps"]), default=0)
    if top:
        ax.plot([0, top], [0, top], color="0.6", linestyle=":", linewidth=1,
                label="one thread per connection")  # fmt: skip
    for run in runs:  # label the last point: a flat line at the bottom is easy to miss
        last = next((r for r in reversed(run["steps"]) if r.threads is not None), None)
        if last is not None:
            ax.annotate(
                f"{run['kind']}: {last.threads:,.0f} threads at {last.connections or 0:,.0f}",
                (last.connections, last.threads), textcoords="offset points",
                xytext=(-10, 8), ha="right", fontsize=8, color=STYLE[run["kind"]]["color"],
            )  # fmt: skip
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.set_ylim(bottom=0)
    _finish(ax, "OS threads of the server process", "connections", "threads")
    _legend(ax)
    _save(fig, path)


def cpu(runs: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=SIZE)
    for run in runs:
        _plot(ax, run, "users_target", "server_cpu_cores", label_suffix=" server")
        _plot(ax, run, "users_target", lambda r: (r.locust_cpu_mean or 0) / 100,
              label_suffix=" run: Locust", linestyle=":", alpha=0.6)  # fmt: skip
    for run in runs:
        _plot(ax, run, "users_target", "other_cpu_cores", label_suffix=" run: other processes",
              linestyle="-.", alpha=0.35)  # fmt: skip
    ax.axhline(1.0, color="0.4", linewidth=1, linestyle="--", label="one core")
    ax.axhline(0.9, color="red", linewidth=0.8, linestyle=":", label="Locust saturation (90 %)")
    ax.set_ylim(bottom=0, top=max(1.6, ax.get_ylim()[1] * 1.35))
    _finish(ax, "CPU in cores (1.0 = one core busy all the time)", "users", "cores")
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    _legend_note(ax, MARKER_NOTE)
    _save(fig, path)


def errors(runs: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=SIZE)
    total = 0.0
    for run in runs:
        _plot(ax, run, "users_target", "failures", label_suffix=" Locust failures")
        disconnects = lambda r: sum(v for k, v in r.disconnects.items() if k != "client_close")  # noqa: E731
        refused = lambda r: sum(r.rejected.values())  # noqa: E731
        _plot(ax, run, "users_target", disconnects, label_suffix=" server-side disconnects",
              linestyle="--", alpha=0.7)  # fmt: skip
        _plot(ax, run, "users_target", refused, label_suffix=" refused", linestyle=":", alpha=0.7)
        dropped = lambda r: sum(r.dropped.values())  # noqa: E731
        _plot(ax, run, "users_target", dropped, label_suffix=" messages dropped",
              linestyle="-.", alpha=0.7)  # fmt: skip
        total += sum(r.failures + disconnects(r) + refused(r) + dropped(r) for r in run["steps"])
    if total:
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
    else:
        ax.set_ylim(-0.5, 10)
    _finish(ax, "Per step: Locust failures, refusals, disconnects the client did not ask "
            "for, drops", "users", "count per step")  # fmt: skip
    _legend(ax)
    if not total:
        ax.text(0.5, 0.5, "all zero: nothing failed, was refused or dropped in any step",
                transform=ax.transAxes, ha="center", fontsize=10, color="0.3")  # fmt: skip
    _save(fig, path)


def _save(fig, path: Path, bottom: float = 0.0) -> None:
    """Lay out (leaving ``bottom`` of the figure's height for a note) and write ``path``."""
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


SCALE_OUT_PLOT = ("scaleout.png", "Scale-out: async on Redis, 1 worker vs N workers")


def scale_out(runs: list[dict], slo_ms: float, name: str, path: Path) -> None:
    """p99 latency and deliveries/s vs users of the scale-out runs, side by side."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(SIZE[0] + 2, SIZE[1]))
    for run in runs:
        _plot(left, run, "users_target", figures.p99, label_suffix=" p99")
        _plot(right, run, "users_target", "deliveries_per_s")
    _slo_on_log_scale(left, slo_ms)
    _finish(left, f"{name} p99 (nothing pinned)", "users", f"{name} p99 (ms, log scale)")
    right.yaxis.set_major_formatter(THOUSANDS)
    right.set_ylim(bottom=0)
    _finish(right, "deliveries / s (all workers)", "users", "deliveries / s")
    _legend(left, MARKER_NOTE)
    _legend(right)
    _save(fig, path)


def draw_all(runs: list[dict], derived: dict, slo_ms: float, latency_name: str, out: Path):
    """Write every plot into ``out``; return {file name: title}."""
    latency(runs, slo_ms, latency_name, out / "latency.png")
    throughput(runs, out / "throughput.png")
    memory(runs, derived, out / "memory.png")
    threads(runs, out / "threads.png")
    cpu(runs, out / "cpu.png")
    errors(runs, out / "errors.png")
    return dict(PLOTS)


CONNECTIONS_PLOT = ("connections.png", "Memory and ping p99 vs connections, with each wall")


def connections(runs: list[dict], slo_ms: float, name: str, path: Path) -> None:
    """Server RSS (summed over its processes) and p99 vs connections held, each server's
    wall (its limit) marked with a vertical line."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(SIZE[0] + 4, SIZE[1] + 0.5))
    for run in runs:
        _plot(left, run, "connections", lambda r: (r.rss_bytes or 0) / 2**30)
        _plot(right, run, "connections", figures.p99, label_suffix=" p99")
        limit = run.get("limit") or {}
        if limit.get("reached"):
            color = STYLE[run.get("style", run["kind"])]["color"]
            for ax in (left, right):
                ax.axvline(limit["users"], color=color, linestyle="--", linewidth=1,
                           label=f"{run['kind']} wall: {limit['users']:,} users")  # fmt: skip
    _slo_on_log_scale(right, slo_ms)
    left.set_ylim(bottom=0)
    _finish(left, "Server RSS, all its processes", "connections held", "GiB")
    _finish(right, f"{name} p99 seen by Locust", "connections held", "ms (log scale)")
    for ax in (left, right):  # up to 100,000: "20k" ticks, few enough not to overlap
        ax.xaxis.set_major_formatter(THOUSANDS_SHORT)
        ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
    _legend(left)
    _legend(right)
    fig.text(0.01, 0.01, MARKER_NOTE, fontsize=7, color="0.35", va="bottom")
    _save(fig, path, bottom=0.04)
