"""The issue's targets, computed from the figures, and the JSON + Markdown report."""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

from loadtest import machine as shared_machine
from loadtest.bench.servers import BARE_OF
from loadtest.serverproc import PROJECT_ROOT

MIN_RATIO = 0.8
ASYNC_KIB = 16.0
THREADED_KIB = 64.0
PER_CONNECTION = 1.05
THREADED_HELD = 19_000
FIXED_RATE_MAX_RATIO = 1.25  # issue 13: threaded CPU per delivery at a moderate load


def context() -> dict:
    """Where the run happened (``machine``: CPU, memory, kernel, limits and load) and on
    what (``versions``: Python, the packages the servers run on, this checkout's commit)."""
    about = shared_machine.describe(None, PROJECT_ROOT)
    packages = about["packages"]
    return {
        "machine": {
            "hostname": about["hostname"],
            "cpu_model": about["cpu_model"],
            "cpus": about["cpus"],
            "memory_gib": round(about["memory_bytes"] / 2**30, 1),
            "kernel": about["kernel"],
            "os": about["distribution"] or about["os"],
            "fd_limit": about["fd_limit"]["soft"],
            "loadavg_at_start": [f"{x:.2f}" for x in about["load_average_at_start"] or ()],
        },
        "versions": {
            "python": platform.python_version(),
            **{
                name: packages.get(name)
                for name in ("websockets", "uvloop", "orjson", "prometheus-client")
            },
            "twinchat_commit": about["git_commit"],
        },
    }


def median_run(runs: list[dict], key: str) -> dict:
    """The run with the median ``key`` (the lower middle one for an even count; None
    ranks as 0), with every run's ``key`` in ``rounds``, in the order they ran."""
    ranked = sorted(runs, key=lambda row: row[key] or 0.0)
    row = dict(ranked[(len(ranked) - 1) // 2])
    row["rounds"] = [run[key] for run in runs]
    return row


def _row(servers: dict, name: str, receivers: int) -> dict | None:
    rows = servers.get(name, {}).get("fanout", [])
    return next((row for row in rows if row["receivers"] == receivers), None)


def ratios(servers: dict) -> list[dict]:
    """Each server's deliveries/s as a ratio to the bare reference of its model.

    With several interleaved rounds, the ratio is the median of the per-round
    ratios (each round's server and reference ran minutes apart at most);
    ``per_round`` lists them.
    """
    out = []
    for name, bare in BARE_OF.items():
        for row in servers.get(name, {}).get("fanout", []):
            ref = _row(servers, bare, row["receivers"])
            if not ref or not ref["deliveries_per_s"]:
                continue
            mine = row.get("rounds", [row["deliveries_per_s"]])
            theirs = ref.get("rounds", [ref["deliveries_per_s"]])
            if len(mine) == len(theirs) and all(theirs):
                per_round = [round(a / b, 3) for a, b in zip(mine, theirs, strict=True)]
                ratio = statistics.median(per_round)
            else:  # a round failed for one of them: compare the medians
                per_round = []
                ratio = row["deliveries_per_s"] / ref["deliveries_per_s"]
            out.append({
                "server": name, "reference": bare, "receivers": row["receivers"],
                "ratio": round(ratio, 3), "per_round": per_round,
            })  # fmt: skip
    return out


def targets(servers: dict) -> list[dict]:
    """One pass/miss line per target of the issue, from the numbers."""
    lines: list[dict] = []

    def add(target: str, value, limit: str, ok: bool, detail: str = "") -> None:
        lines.append({
            "target": target, "value": value, "limit": limit,
            "status": "pass" if ok else "miss", "detail": detail,
        })  # fmt: skip

    def memory(who: str, cap: dict, limit: float) -> None:
        kib, probe = cap["at_max"].get("rss_kib_per_connection"), cap["at_probe"]
        add(
            f"{who}: resident memory per idle connection (at max)",
            kib,
            f"<= {limit} KiB",
            kib is not None and kib <= limit,
            f"{probe.get('rss_kib_per_connection')} KiB at {probe['connections']}",
        )

    for ratio in ratios(servers):
        if ratio["server"] == "async-asyncio":
            continue  # reported, not a target: the target is the default (uvloop) server
        who = "async" if ratio["server"].startswith("async") else "threaded"
        add(
            f"{who}: deliveries/s >= {MIN_RATIO}x {ratio['reference']} "
            f"({ratio['receivers']} receivers)",
            ratio["ratio"],
            f">= {MIN_RATIO}",
            ratio["ratio"] >= MIN_RATIO,
        )

    fixed = servers.get("threaded", {}).get("fixed_rate")
    if fixed and "x_bare" in fixed:
        add(
            f"threaded: server CPU per delivery at a fixed rate <= {FIXED_RATE_MAX_RATIO}x "
            f"{fixed['reference']} (issue 13)",
            fixed["x_bare"],
            f"<= {FIXED_RATE_MAX_RATIO}",
            fixed["x_bare"] <= FIXED_RATE_MAX_RATIO,
            f"each round {' / '.join(str(r) for r in fixed['x_bare_per_round'])}",
        )

    cap = servers.get("async-uvloop", {}).get("capacity")
    if cap:
        memory("async", cap, ASYNC_KIB)
        add(
            f"async: {cap['cap']} concurrent connections held",
            cap["held"],
            f">= {cap['cap']}",
            cap["held"] >= cap["cap"] and cap["server_alive"],
            "server alive" if cap["server_alive"] else "server died",
        )

    cap = servers.get("threaded", {}).get("capacity")
    if cap:
        for key, label in (("threads_per_connection", "threads"), ("fds_per_connection", "fds")):
            values = [cap[p].get(key) for p in ("at_probe", "at_max")]
            worst = max((v for v in values if v is not None), default=None)
            add(
                f"threaded: {label} per connection (at {cap['at_probe']['connections']} "
                f"and at {cap['at_max']['connections']})",
                worst,
                f"<= {PER_CONNECTION}",
                worst is not None and worst <= PER_CONNECTION,
                f"{values[0]} / {values[1]}",
            )
        memory("threaded", cap, THREADED_KIB)
        wanted = min(THREADED_HELD, cap["cap"])
        add(
            "threaded: connections held without dying (fd limit)",
            cap["held"],
            f">= {wanted} and alive",
            cap["held"] >= wanted and cap["server_alive"],
            ("server alive" if cap["server_alive"] else "server died")
            + (f"; stopped by refusal: {cap['refusals'][:1]}" if cap["stopped_by_refusal"] else ""),
        )
    return lines


# Report


def write(out_dir: Path, result: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown(result))
    latest = out_dir.parent / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(out_dir.name)


def markdown(result: dict) -> str:
    m, v, servers = result["machine"], result["versions"], result["servers"]
    ratio = {(r["server"], r["receivers"]): r["ratio"] for r in result["ratios"]}
    out = [
        f"# twinchat benchmark ({result['size']}), {result['date']}",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, {m['os']}, "
        f"Linux {m['kernel']}, fd limit {m['fd_limit']}, load average at start "
        f"{' '.join(m['loadavg_at_start'])}.",
        f"Versions: Python {v['python']}, websockets {v['websockets']}, uvloop {v['uvloop']}, "
        f"orjson {v['orjson']}; twinchat {v['twinchat_commit']}.",
        f"Pinning: {result['pinning']}.",
        f"Throughput runs start twinchat's servers with `{' '.join(result['throughput_args'])}` "
        "(the default per-client limit of 20 msgs/s, burst 40, would measure the limiter).",
        "",
        "## Fan-out throughput",
        "",
        "| server | receivers | deliveries/s (median) | x bare | each round "
        "| server CPU s / 1M deliveries | server CPU | client CPU | lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, data in servers.items():
        for row in data.get("fanout", []):
            x = ratio.get((name, row["receivers"]))
            out.append(
                f"| {name} | {row['receivers']} + {row['senders']} senders "
                f"| {row['deliveries_per_s']:,.0f} | {'' if x is None else f'{x:.2f}'} "
                f"| {' / '.join(f'{n / 1000:,.0f}k' for n in row.get('rounds', []))} "
                f"| {row['server_cpu_s_per_1m_deliveries']} | {row['server_cpu_util']:.0%} "
                f"| {_client_cpu(row, '.0%')} | {row['lost_connections']} |"
            )
    out += _fixed_rate_section(result)
    out += [
        "",
        "## Connection capacity (idle connections: hello + join, rooms of "
        f"{result['config']['room_size']})",
        "",
        "| server | held / cap | alive | RSS KiB/conn | threads/conn | fds/conn "
        "| RSS KiB/conn | threads/conn | fds/conn |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, data in servers.items():
        cap = data.get("capacity")
        if not cap:
            continue
        p, x = cap["at_probe"], cap["at_max"]
        out.append(
            f"| {name} | {cap['held']:,} / {cap['cap']:,}"
            f"{' (refused)' if cap['stopped_by_refusal'] else ''} "
            f"| {'yes' if cap['server_alive'] else 'NO'} "
            f"| {p.get('rss_kib_per_connection')} | {p.get('threads_per_connection')} "
            f"| {p.get('fds_per_connection')} | {x.get('rss_kib_per_connection')} "
            f"| {x.get('threads_per_connection')} | {x.get('fds_per_connection')} |"
        )
    out += [
        "",
        f"First three figures at {result['config']['probe']:,} connections, last three at the "
        "maximum held. RSS per connection is (RSS - RSS before any connection) / connections; "
        "threads and fds per connection are the process totals / connections.",
        "",
        "## Handshake rate (connect + hello + close; references: connect + ping + close)",
        "",
        "| server | handshakes/s | server CPU ms / handshake | server CPU | client CPU | failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, data in servers.items():
        hs = data.get("handshake")
        if not hs:
            continue
        out.append(
            f"| {name} | {hs['handshakes_per_s']:,.0f} | {hs['server_cpu_ms_per_handshake']} "
            f"| {hs['server_cpu_util']:.0%} | {_client_cpu(hs, '.0%')} | {hs['failed']} |"
        )
    out += ["", "## Targets (issues 8 and 13)", ""]
    for line in result["targets"]:
        detail = f" ({line['detail']})" if line["detail"] else ""
        out.append(
            f"- **{line['status'].upper()}** {line['target']}: {line['value']} "
            f"(target {line['limit']}){detail}"
        )
    if result.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(out) + "\n"


def _fixed_rate_section(result: dict) -> list[str]:
    """The fixed-rate table: CPU per delivery at a moderate offered load, each round."""
    rows = {n: d["fixed_rate"] for n, d in result["servers"].items() if d.get("fixed_rate")}
    if not rows:
        return []
    c = result["config"]
    offered = c["rate_senders"] * c["rate_per_sender"]
    out = [
        "",
        f"## Fixed rate ({c['rate_members']} members, {c['rate_senders']} senders at "
        f"{c['rate_per_sender']:g} says/s: {offered:g} says/s in, "
        f"{offered * c['rate_members']:,.0f} deliveries/s out)",
        "",
        f"Server CPU over {c['rate_duration']:g} s after {c['rate_warmup']:g} s of warm-up, "
        "exact per thread (/proc/<pid>/task/*/schedstat), per delivery counted by the members. "
        "`x bare`: median of the per-round ratios to the bare reference of the same model. "
        "`achieved`: deliveries counted / (says/s offered x members x seconds). "
        "`server count`: deliveries/s by the server's own chat_messages_delivered_total "
        "(read just before and after the window) / deliveries/s counted by the members. "
        "`other load`: CPU used by other processes and stolen by the hypervisor "
        "during the window (100 % = one CPU), from /proc/stat. `client wake-ups/s`: the load "
        "client's voluntary context switches; on loopback the server's CPU pays for each.",
        "",
        "| server | server CPU µs / delivery | x bare | each round (µs) | x bare each round "
        "| deliveries/s | achieved | server count | server CPU | client CPU "
        "| client CPU µs / delivery | client wake-ups/s | max send lag ms | lost | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        x = row.get("x_bare")
        count = row.get("server_count_vs_received")
        out.append(
            f"| {name} | {row['server_us_per_delivery']} | {'' if x is None else f'{x:.2f}'} "
            f"| {' / '.join(str(r) for r in row['rounds'])} "
            f"| {' / '.join(str(r) for r in row.get('x_bare_per_round', []))} "
            f"| {row['deliveries_per_s']:,.0f} | {row['achieved']:.1%} "
            f"| {'' if count is None else count} | {row['server_cpu_util']:.1%} "
            f"| {_client_cpu(row, '.1%')} "
            f"| {row['client_us_per_delivery']} | {row.get('client_wakeups_per_s', '')} "
            f"| {row['max_send_lag_ms']} | {row['lost_connections']} | {_other_load(row)} |"
        )
    return out


def _client_cpu(row: dict, spec: str) -> str:
    """The load client's CPU use, formatted by ``spec``, marked when it was the bottleneck."""
    return f"{row['client_cpu_util']:{spec}}{' SATURATED' if row['client_saturated'] else ''}"


def _other_load(row: dict) -> str:
    """CPU used by other processes during the window, and stolen by the hypervisor."""
    if "others_cpu_util" not in row:
        return ""
    return f"{row['others_cpu_util']:.0%} + {row['steal_util']:.0%} steal"
