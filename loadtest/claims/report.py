"""Write reports/claims/<timestamp>/: summary.json, claims.md, report.html and the plots.

The claims table has every claim of the article, in the comparison's order:
the rows the claims scenarios and code facts decide (:mod:`loadtest.claims.verdicts`),
completed by the chat climb's rows from a ``make compare`` report when one is
given (each row says what tested it, and from which report).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from loadtest import codefacts
from loadtest.claims import blocking, cpubound, plots, sharedstate, verdicts
from loadtest.compare import claims as compare_claims
from loadtest.compare.figures import shown as _n
from loadtest.compare.report import (  # the comparison report's parts
    CSS,
    _e,
    _table,
    claims_markdown,
    claims_table_html,
)


def table(summary: dict, compare: dict | None, compare_dir: str | None) -> list[dict]:
    """Every claim: decided by ``summary`` where a scenario or code fact tests it (unless
    that part was not run), else by ``compare`` (the summary.json of report ``compare_dir``)."""
    blocking_result, cpu_result = summary.get("blocking"), summary.get("cpubound")
    code = summary["code"]
    ours = {
        r["key"]: r
        for r in (
            verdicts.simplicity(code),
            verdicts.blocking_compatibility(blocking_result),
            verdicts.gil(cpu_result),
            verdicts.shared_state_complexity(summary.get("shared"), code),
            verdicts.true_parallelism(cpu_result),
            verdicts.simpler_shared_state(code),
            verdicts.blocking_incompatibility(blocking_result),
            *verdicts.unmeasurable(),
        )
    }
    compare = compare or {}
    theirs = {}
    for index, row in enumerate(compare.get("claims") or []):
        key = row.get("key") or compare_claims.CLAIM_KEYS[index]
        theirs[key] = {
            **row, "key": key,
            "tested_by": f"{compare_claims.CHAT_CLIMB}, report {compare_dir} "
                         f"({compare.get('date', '?')})",
        }  # fmt: skip
    rows = []
    for key in compare_claims.CLAIM_KEYS:
        if key in ours and (not ours[key]["measured"].startswith("not run") or key not in theirs):
            rows.append(ours[key])
        elif key in theirs:
            rows.append(theirs[key])
        else:
            side, kind = compare_claims.SIDES[key]
            rows.append({
                "key": key, "side": side, "kind": kind, "claim": key, "tested_by": "make compare",
                "measurement": "—", "rule": "—", "verdict": verdicts.NOT_MEASURED,
                "measured": "no make compare report given (--compare DIR)",
            })  # fmt: skip
    return rows


def write_summary(out: Path, summary: dict) -> None:
    """summary.json: what the run has so far (a run writes it after each part, so that a
    failure later loses no measurement; ``--render`` finishes the report from it)."""
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


def write(out: Path, summary: dict) -> None:
    """Draw the plots, write summary.json, claims.md and report.html."""
    titles = {}
    for part, draw in (("blocking", plots.blocking), ("cpubound", plots.cpubound)):
        if summary.get(part):
            draw(summary[part], out / f"{part}.png")
            titles[f"{part}.png"] = plots.PLOTS[f"{part}.png"]
    summary["plots"] = titles
    write_summary(out, summary)
    (out / "claims.md").write_text(claims_markdown(summary["claims"]) + "\n")
    (out / "report.html").write_text(render_html(summary, out))


# -- HTML -------------------------------------------------------------------------------


def _img(out: Path, name: str, title: str) -> str:
    data = base64.b64encode((out / name).read_bytes()).decode()
    return f"<h3>{_e(title)}</h3><img alt='{_e(title)}' src='data:image/png;base64,{data}'>"


_ROLE = re.compile(r":(?:data|class|mod|func|meth|attr):`~?([\w.]+)`")


def method_html(module) -> str:
    """A scenario module's docstring (its method) as HTML for a reader of the report:
    ``:data:`NAME``` becomes the module's value of NAME, other references their last
    name, ````literals```` code; paragraphs and ``- `` lists kept."""

    def reference(match: re.Match) -> str:
        name = match.group(1)
        value = getattr(module, name, None) if "." not in name else None
        if isinstance(value, (tuple, list)):
            return ", ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{value:,}" if isinstance(value, int) else f"{value:g}"
        return name.rsplit(".", 1)[-1]

    html = []
    for block in (module.__doc__ or "").strip().split("\n\n"):
        items = re.split(r"\n\s*- ", "\n" + block) if block.lstrip().startswith("- ") else None
        texts = [t for t in items if t.strip()] if items else [block]
        rendered = [_literals(" ".join(_ROLE.sub(reference, t).split())) for t in texts]
        if items:
            html.append("<ul>" + "".join(f"<li>{t}</li>" for t in rendered) + "</ul>")
        else:
            html.append(f"<p>{rendered[0]}</p>")
    return "\n".join(html)


def _literals(text: str) -> str:
    """``text`` escaped, its ````literals```` as code."""
    return re.sub(r"``(.+?)``", r"<code>\1</code>", _e(text))


def render_html(summary: dict, out: Path) -> str:
    m = summary["machine"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>twinchat: the article's claims, {_e(summary['date'])}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>twinchat: the article's claims, each tested by a scenario built for it</h1>",
        f"<p>Run on {_e(m['date'])}, {_e(m['cpus'])} CPUs ({_e(m['cpu_model'])}), "
        f"{m['memory_bytes'] / 2**30:.0f} GiB, commit {_e((m.get('git_commit') or 'n/a')[:12])}. "
        f"The article: <i>{_e(compare_claims.ARTICLE['title'])}</i> "
        f"({_e(compare_claims.ARTICLE['date'])}), each claim in this project's words.</p>",
    ]
    if summary.get("profile") == "smoke":
        parts.append(
            "<p><b>A smoke run</b> (<code>--profile smoke</code>): smaller loads and shorter "
            "steps than each section describes; its tables show what ran. Its verdicts "
            "are not the project's.</p>"
        )
    parts += [
        "<h2>Claims</h2>",
        "<p class='small'>Thresholds: "
        + ", ".join(f"{_e(k)} = {_e(v)}" for k, v in summary["thresholds"].items())
        + ".</p>",
        claims_table_html(summary["claims"]),
    ]
    if summary.get("blocking"):
        parts += [
            "<h2>Blocking library calls</h2>",
            method_html(blocking),
            "<p>Where the call sits is the lesson. The threaded server makes it in the "
            "sender's own thread <b>outside</b> <code>chat_lock</code> "
            "(<code>ChatServer._screen</code> in threaded_server/server.py): while that "
            "thread waits, the other threads deliver. Inside the lock it would stall every "
            "room, as the call on the loop stalls the async server. The async server calls "
            "the same blocking function on its loop as written, or moves it to a worker "
            "thread with <code>asyncio.to_thread</code> (the loop's default executor: "
            "min(32, CPUs + 4) threads).</p>",
            _img(out, "blocking.png", plots.PLOTS["blocking.png"]),
            _blocking_table(summary["blocking"]),
        ]
    if summary.get("cpubound"):
        parts += [
            "<h2>CPU-bound work and the GIL</h2>",
            method_html(cpubound),
            _img(out, "cpubound.png", plots.PLOTS["cpubound.png"]),
            _cpu_table(summary["cpubound"]),
        ]
    if summary.get("shared"):
        parts += [
            "<h2>Shared state: the threaded server without chat_lock</h2>",
            method_html(sharedstate),
            _shared_table(summary["shared"]),
        ]
    machine_rows = [[k, json.dumps(v) if isinstance(v, dict) else v] for k, v in m.items()]
    files = sorted(f.name for f in out.iterdir() if f.is_file())
    parts += [
        "<h2>Code facts (counted from the source, not measured)</h2>",
        method_html(codefacts),
        _code_table(summary["code"]),
        "<h2>Machine</h2>",
        _plain_table(["", ""], machine_rows),
        "<p class='small'>Files: " + ", ".join(f"<code>{_e(f)}</code>" for f in files),
        f"</p><p class='small'>Command: <code>{_e(' '.join(summary['command']))}</code></p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _plain_table(head: list[str], body: list[list]) -> str:
    """A table of plain values: each cell escaped."""
    return _table(head, [[_e(cell) for cell in row] for row in body])


def _step(point: dict) -> str:
    return point["outcome"] + (f": {point['reason']}" if point["reason"] else "")


def _blocking_table(result: dict) -> str:
    body = [
        [p["variant"], f"{p['delay_ms']:g}", _n(p["calls"]), _n(p["fanout_p50_ms"]),
         _n(p["fanout_p99_ms"]), _n(p["extra_p99_ms"]),
         _n(p.get("probe_p99_ms"), "{:,.1f}")
         + ("" if p.get("probe_window") in (None, "judged window") else " (whole step)"),
         _n(p["loop_lag_p99_ms"], "{:,.1f}"), _n(p["deliveries_per_s"]),
         _n(p["server_cpu_cores"], "{:.2f}"), _n(p["threads"]),
         _n(100 * (p["failure_ratio"] or 0), "{:.2f}"), _step(p)]
        for p in result["points"]
    ]  # fmt: skip
    return _plain_table(
        ["variant", "N ms", "moderation calls", "fan-out p50 ms", "fan-out p99 ms",
         "p99 - N ms", "bystander ping p99 ms", "loop lag p99 ms", "deliveries/s",
         "server CPU (cores)", "threads", "failures %", "step"], body,
    )  # fmt: skip


def _cpu_table(result: dict) -> str:
    body = [
        [p["server"], p["users"], _n(p["says_per_s_offered"]), _n(p["demand_cores"], "{:.2f}"),
         _n(p["says_per_s"]), _n(p["deliveries_per_s"]), _n(p["cpu_cores_exact"], "{:.2f}"),
         _n(p["cpu_cores_peak"], "{:.2f}"), _n(p["busiest_thread_share"], "{:.0%}"),
         _n(p["threads"]), _n(p["machine_cpu_mean"]), _n(p["locust_cpu_mean"]),
         _n(p["fanout_p99_ms"]), _step(p)]
        for p in result["points"]
    ]  # fmt: skip
    return _plain_table(
        ["server", "users", "says/s offered", "work offered (cores)", "says/s received",
         "deliveries/s", "server CPU (threads, exact)", "server CPU peak 3 s",
         "busiest thread", "threads", "machine CPU %", "Locust CPU %", "fan-out p99 ms",
         "step"], body,
    )  # fmt: skip


def _shared_table(shared: dict) -> str:
    keys = sharedstate.BREAKAGES
    body = [
        ["yes" if r["locked"] else "no-op", f"{r['switch_interval'] * 1000:g}", r["says_sent"],
         *(r.get(k, "failed") for k in keys)]
        for r in shared["runs"]
    ]  # fmt: skip
    return _plain_table(["chat_lock", "switch interval ms", "says sent", *keys], body)


def _code_table(code: dict) -> str:
    body = [
        [_e(kind), _e(c["lines"]), _e(", ".join(f"{f} {n}" for f, n in c["files"].items())),
         _e(c["primitive_uses"]), _e(", ".join(f"{k} {v}" for k, v in c["primitives"].items())),
         _e("; ".join(c["locks"]) or "none"), _e(c["lock_sections"]),
         _literals("; ".join(c["lock_order_rules"]) or "none")]
        for kind, c in code.items()
    ]  # fmt: skip
    return _table(
        ["server", "non-blank lines", "per file", "primitive calls", "by name", "locks",
         "critical sections", "lock-order rules"], body,
    )  # fmt: skip
