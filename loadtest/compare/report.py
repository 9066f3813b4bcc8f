"""Write reports/<timestamp>/: summary.json, report.html (self-contained) and the plots."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from pathlib import Path

from loadtest import codefacts
from loadtest.compare import claims, connections, diagnosis, figures, knee, plots, steps
from loadtest.compare.figures import shown
from loadtest.compare.profiles import Profile
from loadtest.compare.steps import Outcome, StepRow

KINDS = ("threaded", "async")


def headline(runs: dict, derived: dict, names=KINDS) -> list[dict]:
    """One row per server (or per run of ``names``): the figures the README's table shows."""
    out = []
    for kind in names:
        if kind not in runs:
            continue
        run, fig = runs[kind], derived[kind]
        limit, ok = run["limit"], fig["last_ok"] or {}
        out.append(
            {
                "server": kind,
                "limit_users": limit["users"],
                "limit": (f"{limit['users']:,} users" if limit["reached"] else limit["criterion"]),
                "criterion": limit["criterion"],
                "last_ok_users": limit["last_ok_users"],
                "deliveries_per_s_last_ok": ok.get("deliveries_per_s"),
                "p99_ms_last_ok": ok.get("p99_ms"),
                "kib_per_connection": fig["kib_per_connection"],
                "threads_per_connection": fig["threads_per_connection"],
                "server_cpu_cores_last_ok": ok.get("server_cpu_cores"),
                "server_cpu_cores_at_limit": (fig["at_limit"] or {}).get("server_cpu_cores"),
                "cpu_us_per_delivery_last_ok": ok.get("cpu_us_per_delivery"),
            }
        )
    return out


def headline_markdown(rows: list[dict]) -> str:
    """The headline as a Markdown table (for docs and the README)."""
    lines = [
        "| server | limit (users, criterion) | last good step | deliveries/s there | p99 there "
        "| memory per connection | threads per connection | server CPU there |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {_limit_cell(r)} "
            f"| {shown(r['last_ok_users'])} users | {shown(r['deliveries_per_s_last_ok'])} "
            f"| {shown(r['p99_ms_last_ok'], '{:,.0f} ms')} "
            f"| {shown(r['kib_per_connection'], '{:.1f} KiB')} "
            f"| {shown(r['threads_per_connection'], '{:.2f}')} "
            f"| {shown(r['server_cpu_cores_last_ok'], '{:.2f} cores')} |"
        )
    return "\n".join(lines)


def claims_markdown(rows: list[dict]) -> str:
    """The claims table as Markdown (claim, what tested it, this run's figures, verdict)."""
    lines = ["| article says | tested by | this run | verdict |", "|---|---|---|---|"]
    for c in rows:
        measured = c["measured"].replace("|", "/")
        lines.append(
            f"| {c['side']} {c['kind']}: {c['claim']} | {c.get('tested_by', '')} | {measured} "
            f"| {c['verdict']} |"
        )
    return "\n".join(lines)


def _limit_cell(r: dict) -> str:
    """A headline row's limit: users and criterion, or why there is none ("not reached ...")."""
    if r["limit_users"] is None:
        return r["limit"]
    return f"{r['limit_users']:,} users: {r['criterion']}"


def to_json(value: object) -> object:
    """summary.json's encoding of what json cannot write: a step row as its dict, else str."""
    return value.to_dict() if isinstance(value, StepRow) else str(value)


def write(
    out: Path,
    *,
    root: Path,
    profile: Profile,
    scenario: str,
    latency_name: str,
    runs: dict,
    probes: dict,
    machine: dict,
    command: list[str],
    locust_args: list[str],
    server_args: list[str],
    lines: dict | None = None,
    scale_out: dict | None = None,
    budget: dict | None = None,
) -> dict:
    """Compute the derived figures and claims, draw the plots, write summary.json and HTML.

    ``scale_out``: the runs of :mod:`loadtest.compare.scaleout` by name, when there were.
    ``budget``: ``{"cores": servers' CPU budget or None, "why": ...}``.
    """
    derived = {kind: figures.derive(run) for kind, run in runs.items()}
    why_broke = {kind: diagnosis.explain(run, machine["cpus"]) for kind, run in runs.items()}
    rows = headline(runs, derived)
    lines = lines or codefacts.source_lines(root)  # context for the simplicity claim
    table = claims.evaluate(runs, derived, probes, lines) if set(KINDS) <= set(runs) else []
    servers, slo_ms = [runs[k] for k in KINDS if k in runs], profile.limits.slo_ms
    plot_titles = plots.draw_all(servers, derived, slo_ms, latency_name, out)
    if profile.spread:
        file, title = plots.CONNECTIONS_PLOT
        plots.connections(servers, slo_ms, latency_name, out / file)
        plot_titles = {file: title, **plot_titles}
    scale = None
    if scale_out:
        scale_derived = {name: figures.derive(run) for name, run in scale_out.items()}
        ordered = sorted(scale_out, key=lambda name: scale_out[name].get("workers", 1))
        for index, name in enumerate(ordered):
            scale_out[name]["style"] = "scale-1" if index == 0 else "scale-n"
        file, title = plots.SCALE_OUT_PLOT
        plots.scale_out([scale_out[n] for n in ordered], slo_ms, latency_name, out / file)
        plot_titles[file] = title
        scale = {
            "headline": headline(scale_out, scale_derived, ordered),
            "runs": {n: {**scale_out[n], "derived": scale_derived[n]} for n in ordered},
        }
    summary = {
        "format": 1,
        "date": machine["date"],
        "command": command,
        "profile": profile.as_dict(),
        "scenario": scenario,
        "latency_name": latency_name,
        "locust_args": locust_args,
        "server_args": server_args,
        "rules": steps.__doc__,
        "search": knee.__doc__,
        "budget": budget or {"cores": None, "why": "none"},
        "why_broke": why_broke,
        "diagnosis_rule": diagnosis.RULE,
        "article": claims.ARTICLE,
        "thresholds": claims.THRESHOLDS,
        "machine": machine,
        "headline": rows,
        "servers": {
            kind: {**runs[kind], "derived": derived[kind], "probe": probes.get(kind)}
            for kind in runs
        },
        "claims": table,
        "scale_out": scale,
        "source_lines": lines,
        "plots": plot_titles,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=to_json))
    (out / "headline.md").write_text(headline_markdown(rows) + "\n")
    (out / "claims.md").write_text(claims_markdown(table) + "\n")
    if profile.spread:
        (out / "connections.md").write_text(connections.markdown(runs) + "\n")
    (out / "report.html").write_text(render_html(summary, out))
    return summary


# -- HTML ---------------------------------------------------------------------------

# The one stylesheet of the project's reports (this one and make claims').
CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} .num{text-align:right;font-variant-numeric:tabular-nums}
.supported{background:#e3f6e3} .notsupported{background:#fde4e4}
.notmeasured,.undecided{color:#777} .invalid{color:#999} .limit{background:#fde4e4;font-weight:bold}
img{max-width:100%;border:1px solid #eee} code{background:#f5f5f5;padding:1px 3px}
pre{white-space:pre-wrap} .small{font-size:12px;color:#555}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _table(head: list[str], body: list[list], classes: list[str] | None = None) -> str:
    rows = []
    for i, cells in enumerate(body):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
        + "".join(rows) + "</table>"
    )  # fmt: skip


def render_html(summary: dict, out: Path) -> str:
    """report.html: one self-contained page (plots embedded), built from summary.json.

    Each section is a function below that returns its HTML, written as f-strings so
    that the words stay next to the figures they format. A template (string.Template,
    or Jinja2, which is here only as a dependency of Locust's web UI) was considered:
    every section would still compute its figures and loops in Python, and the page
    would be split between the two (issue 14).
    """
    steps_of = dict(summary["servers"])
    if summary.get("scale_out"):
        steps_of.update(summary["scale_out"]["runs"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>twinchat: threaded vs asyncio, {_e(summary['date'])}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>twinchat: where thread-per-connection and asyncio hit their limits</h1>",
        _intro_html(summary),
        _budget_html(summary),
        "<h2>Headline</h2>",
        _headline_html(summary["headline"]),
        connections.html_section(summary) if summary["profile"].get("spread") else "",
        _why_html(summary),
        "<p class='small'>Limit: the first step that broke a rule below. “Last good step”: "
        "the largest valid step within the SLO; deliveries/s, p99 and CPU are read there. "
        "Memory and threads per connection: slope of the server's RSS / thread count over "
        "its connection count across all steps.</p>",
        "<p class='small'>The machine may be shared: the CPU plot and the step tables show "
        "the CPU used by other processes during each step (“other processes CPU”, in cores); "
        "a limit reached while others used the server's core is worth a second run.</p>",
        _rules_html(summary),
        _plots_html(summary, out),
        _scale_out_html(summary.get("scale_out")),
        _claims_html(summary),
        *(_server_steps_html(kind, server) for kind, server in steps_of.items()),
        "<h2>Machine</h2>",
        _table(
            ["", ""],
            [
                [_e(k), _e(v if not isinstance(v, dict) else json.dumps(v))]
                for k, v in summary["machine"].items()
            ],
        ),
        _files_html(summary, out),
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part)


def _intro_html(summary: dict) -> str:
    """What ran: scenario, profile, steps, pinning, machine, commit."""
    m, p = summary["machine"], summary["profile"]
    return (
        f"<p>Scenario <b>{_e(summary['scenario'])}</b>, profile <b>{_e(p['name'])}</b>: a "
        f"climb through {_e(p['levels'])} users ({p['step_time']:g} s held after each ramp "
        f"at {p['spawn_rate']:g} users/s, judged on the last {p['window']:g} s), stopped at "
        f"the first confirmed breach, then narrowed on freshly started servers until the "
        f"limit is known within {p['precision']:.0%}{_narrowing_words(summary)}. Same steps, "
        f"same load for both "
        f"servers. {_e(m['pinning']['why'])}. Run on {_e(m['date'])}, {_e(m['cpus'])} CPUs "
        f"({_e(m['cpu_model'])}), {m['memory_bytes'] / 2**30:.0f} GiB, commit "
        f"{_e((m.get('git_commit') or 'n/a')[:12])}.</p>"
    )


def _narrowing_words(summary: dict) -> str:
    """How its narrowing runs climbed, for a report whose runs repeat the last good level."""
    rows = (r for server in summary["servers"].values() for r in server["steps"])
    if not any(r.phase == "base" for r in rows):
        return ""
    return (
        " (each narrowing run holds the last good level again, phase <i>base</i>, then "
        "steps to the level it probes, phase <i>narrow</i>)"
    )


def _rules_html(summary: dict) -> str:
    """The step rules with this run's thresholds."""
    limits = summary["profile"]["limits"]
    return (
        "<h2>Rules</h2><ul>"
        f"<li>limit when p99 of <code>{_e(summary['latency_name'])}</code> &gt; "
        f"{limits['slo_ms']:g} ms in a step (more than 1 % of receptions slower)</li>"
        f"<li>limit when failures &gt; {limits['max_failure_ratio']:.0%} of requests; "
        "<i>refused</i> when the server refuses connections; <i>unresponsive</i> when it is "
        f"alive but its /metrics stays silent for {limits['server_silent_s']:g} s or more than "
        f"{limits['max_connect_failure_ratio']:.0%} of connects fail without a refusal; "
        "<i>died</i> only when its process exited</li>"
        "<li>a latency or failure breach followed by an ok (bigger) step is <i>transient</i> "
        "(a disturbance, not the limit); two in a row, or one on the last step, make the "
        "limit</li>"
        f"<li>a step where the busiest Locust process averaged &gt; "
        f"{limits['locust_cpu_saturated']:g} % of a core is "
        f"<i>invalid</i>, never the server's limit; {limits['invalid_steps_to_stop']} invalid "
        "steps in a row end the run (“load generator saturated”)</li></ul>"
    )


def _plots_html(summary: dict, out: Path) -> str:
    """Every plot, embedded as a data: URL."""
    parts = []
    for name, title in summary["plots"].items():
        data = base64.b64encode((out / name).read_bytes()).decode()
        parts.append(
            f"<h3>{_e(title)}</h3><img alt='{_e(title)}' src='data:image/png;base64,{data}'>"
        )
    return "\n".join(parts)


def _scale_out_html(scale: dict | None) -> str:
    if not scale:
        return ""
    return (
        "<h2>Scale-out: async on Redis, 1 worker vs N workers</h2>\n"
        "<p class='small'>The async server with <code>--broker redis://...</code> (a real "
        "redis-server started for the run), once with 1 worker and once with "
        "<code>--workers N</code> (N = the machine's CPUs), same steps, nothing pinned: "
        "the workers, Redis and Locust share the machine. Figures are summed over the "
        "workers. See docs/scaling.md.</p>\n" + _headline_html(scale["headline"])
    )


def _claims_html(summary: dict) -> str:
    """The article's claims with this run's verdicts."""
    if not summary["claims"]:
        return ""
    intro = (
        "<h2>The article's claims, tested by this run</h2>\n"
        f"<p class='small'>From <i>{_e(summary['article']['title'])}</i> "
        f"({_e(summary['article']['date'])}), in this project's words. Each verdict is "
        "computed from the figures of this run with the rule shown; thresholds: "
        + ", ".join(f"{_e(k)} = {_e(v)}" for k, v in summary["thresholds"].items())
        + ".</p>"
    )
    return intro + "\n" + claims_table_html(summary["claims"])


def claims_table_html(rows: list[dict]) -> str:
    """The claims table (the comparison's and the claims run's), a row per claim, each
    row's class its verdict."""
    body = [
        [_e(f"{c['side']} {c['kind']}"), _e(c["claim"]), _e(c.get("tested_by", "")),
         _e(c["measurement"]), _e(c["rule"]), _e(c["measured"]), f"<b>{_e(c['verdict'])}</b>"]
        for c in rows
    ]  # fmt: skip
    classes = [c["verdict"].replace(" ", "").replace("here", "") for c in rows]
    head = ["", "claim", "tested by", "measurement", "rule", "this run", "verdict"]
    return _table(head, body, classes)


def _server_steps_html(kind: str, server: dict) -> str:
    """One server's step table, how its run stopped, and its unpinned probe."""
    parts = [
        f"<h2>Steps: {_e(kind)}</h2>",
        f"<p class='small'>Stopped: {_e(server['stop_reason'])}; Locust exit "
        f"{_e(server['locust_exit'])}, server exit {_e(server['server_exit'])}.</p>",
        _steps_html(server["steps"]),
    ]
    if server.get("server_log_tail"):
        parts.append(f"<pre class='small'>{_e(server['server_log_tail'])}</pre>")
    probe = server.get("probe")
    if probe and probe.get("steps"):
        parts.append(
            f"<p>Unpinned probe ({_e(probe['levels'][0])} users, {probe['step_time']:g} s, "
            "nothing pinned):</p>"
        )
        parts.append(_steps_html(probe["steps"]))
    return "\n".join(parts)


def _files_html(summary: dict, out: Path) -> str:
    files = sorted(f.name for f in out.iterdir() if f.is_file())
    return (
        "<h2>Files</h2><p class='small'>Beside this report: "
        + ", ".join(f"<code>{_e(f)}</code>" for f in files)
        + ". <code>summary.json</code> holds every figure; <code>*-samples.jsonl</code> one "
        "sample per second; <code>*-locust_*.csv</code> Locust's own CSVs.</p>\n"
        f"<p class='small'>Command: <code>{_e(' '.join(summary['command']))}</code></p>"
    )


def _budget_html(summary: dict) -> str:
    """The CPU budget and the load generator: what each cost per delivered message."""
    budget = summary.get("budget") or {}
    costs = []
    for kind, server in summary["servers"].items():
        d = server["derived"]
        costs.append(
            f"{_e(kind)} run: Locust {shown(d.get('locust_us_per_delivery'), '{:.1f}')} µs, the "
            f"server {shown(d.get('server_us_per_delivery'), '{:.1f}')} µs of CPU per delivered "
            f"message (medians over its valid steps); {_e(d.get('locust_processes'))} Locust "
            f"process(es), busiest at {shown(d.get('locust_busiest_cpu_peak'), '{:.0f}')} % of a "
            "core at most"
        )
    head = (
        f"<b>Server CPU budget: {_e(budget.get('cores') or 'none')}"
        f"{' CPU' if budget.get('cores') else ''}</b> — {_e(budget.get('why', ''))}."
    )
    why = ""
    if budget.get("cores"):
        why = (
            " A load generator that spends more CPU per message than the server cannot push "
            "the server to its limit on an equal share of the machine, and a knee found at "
            "parity is a coin toss. Both servers get the same quota, as a container limit "
            "(<code>docker run --cpus</code>) sets one; Locust keeps a whole CPU. What this "
            "run measured:"
        )
    return f"<p>{head}{why}</p><ul>" + "".join(f"<li>{c}</li>" for c in costs) + "</ul>"


def _why_html(summary: dict) -> str:
    """Why each server broke, in words, from its own figures."""
    items = []
    for why in (summary.get("why_broke") or {}).values():
        if not why.get("text"):
            continue
        reading = f" <b>Reading: {_e(why['reading'])}.</b>" if why.get("reading") else ""
        items.append(f"<li>{_e(why['text'])}{reading}</li>")
    if not items:
        return ""
    return (
        "<h2>Why each server broke</h2><ul>" + "".join(items) + "</ul>"
        f"<p class='small'>Rule: {_e(summary.get('diagnosis_rule', ''))}. CPU is the sum "
        "of the server's threads' time on a CPU (<code>/proc/PID/task/*/schedstat</code>), "
        "waiting to run is the second field of the same file, context switches from "
        "<code>/proc/PID/task/*/status</code>, all read from outside the server over the "
        "judged window.</p>"
    )


def _headline_html(rows: list[dict]) -> str:
    body = []
    for r in rows:
        body.append([
            f"<b>{_e(r['server'])}</b>",
            _e(_limit_cell(r)),
            _e(shown(r["last_ok_users"])),
            _e(shown(r["deliveries_per_s_last_ok"])),
            _e(shown(r["p99_ms_last_ok"], "{:,.0f} ms")),
            _e(shown(r["kib_per_connection"], "{:.1f} KiB")),
            _e(shown(r["threads_per_connection"], "{:.2f}")),
            _e(shown(r["server_cpu_cores_last_ok"], "{:.2f}")),
            _e(shown(r["server_cpu_cores_at_limit"], "{:.2f}")),
            _e(shown(r["cpu_us_per_delivery_last_ok"], "{:.1f}")),
        ])  # fmt: skip
    return _table(
        ["server", "limit", "last good step (users)", "deliveries/s there", "p99 there",
         "memory / connection", "threads / connection", "server CPU there (cores)",
         "server CPU at limit (cores)", "CPU µs / delivery"],
        body,
    )  # fmt: skip


STEP_CLASS = {Outcome.INVALID: "invalid", Outcome.LIMIT: "limit", Outcome.TRANSIENT: "invalid"}
# The step table's columns: the header, and the cell of a row under it.
STEP_COLUMNS: tuple[tuple[str, Callable[[StepRow], object]], ...] = (
    ("phase", lambda r: r.phase or ""),
    ("users", lambda r: r.users_target),
    ("conns", lambda r: shown(r.connections) + ("" if r.settled else " (not all up)")),
    ("p50 ms", lambda r: shown(figures.p50(r), "{:,.0f}")),
    ("p99 ms", lambda r: shown(figures.p99(r), "{:,.0f}")),
    ("server fan-out p99 ms", lambda r: shown(r.server_fanout_p99_ms, "{:,.1f}")),
    ("loop lag p99 ms", lambda r: shown(r.loop_lag_p99_ms, "{:,.1f}")),
    ("deliveries/s", lambda r: shown(r.deliveries_per_s)),
    ("server CPU (own counter)", lambda r: shown(r.server_cpu_cores, "{:.2f}")),
    ("server CPU (threads, exact)", lambda r: shown(r.cpu_cores_exact, "{:.2f}")),
    ("throttled s/s", lambda r: shown(r.throttled_per_s, "{:.2f}")),
    ("waiting to run s/s", lambda r: shown(r.wait_to_run_per_s, "{:.2f}")),
    ("involuntary switches / delivery",
     lambda r: shown(r.involuntary_switches_per_delivery, "{:.3f}")),
    ("Locust CPU %", lambda r: shown(r.locust_cpu_mean, "{:.0f}")),
    ("other processes CPU", lambda r: shown(r.other_cpu_cores, "{:.2f}")),
    ("busiest server thread", lambda r: shown(r.busiest_thread_share, "{:.0%}")),
    ("RSS MiB", lambda r: shown((r.rss_bytes or 0) / 2**20, "{:.0f}")),
    ("threads", lambda r: shown(r.threads)),
    ("fds", lambda r: shown(r.open_fds)),
    ("failures %", lambda r: f"{100 * r.failure_ratio:.2f}"),
    ("disconnects", lambda r: ", ".join(f"{k} {v:.0f}" for k, v in r.disconnects.items()) or "-"),
    ("outcome", lambda r: r.outcome + (f": {r.reason}" if r.reason else "")),
)  # fmt: skip


def _steps_html(rows: list[StepRow]) -> str:
    return _table(
        [head for head, _ in STEP_COLUMNS],
        [[_e(cell(r)) for _, cell in STEP_COLUMNS] for r in rows],
        [STEP_CLASS.get(r.outcome, "") for r in rows],
    )
