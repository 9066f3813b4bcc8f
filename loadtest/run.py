"""Run Locust against a twinchat server this script starts (used by ``make loadtest``).

    python -m loadtest.run --server async -- --scenario chat -u 2000 -r 100 -t 2m
    python -m loadtest.run --host ws://127.0.0.1:8002/ws -- -u 500 -t 1m
    python -m loadtest.run --server threaded --ui          # web UI at :8089

Unless ``--host`` is given, the server is started with loadtest.serverproc on
its standard ports (threaded 8001/9101, async 8002/9102), so the monitoring
stack's Prometheus jobs see it, and stopped afterwards. Headless runs write
``locust_*.csv``, ``report.html``, ``locust.log``, the server log and the
server's last ``/metrics`` into ``--out`` (default reports/loadtest-<timestamp>).
Everything after ``--`` goes to Locust unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path

from loadtest.locustcmd import locust_command
from loadtest.serverproc import KINDS, PROJECT_ROOT, is_free, start_server

STANDARD_PORTS = {"threaded": (8001, 9101), "async": (8002, 9102)}


def start_standard(kind: str, server_args: list[str], log_path: Path):
    """Start ``kind`` on its standard ports and wait until it serves."""
    port, metrics_port = STANDARD_PORTS[kind]
    for p in (port, metrics_port):
        if not is_free("127.0.0.1", p):
            raise SystemExit(
                f"port {p} is busy (is a {kind} server already running?). "
                f"Stop it, or point Locust at it: HOST=ws://127.0.0.1:{port}/ws"
            )
    return start_server(kind, *server_args, port=port, metrics_port=metrics_port, log_path=log_path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    locust_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, locust_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=KINDS, default="async")
    parser.add_argument("--host", help="drive this ws:// URL instead of starting a server")
    parser.add_argument("--server-args", default="", help="extra server flags, one string")
    parser.add_argument("--out", type=Path, help="report directory")
    parser.add_argument("--ui", action="store_true", help="web UI at 127.0.0.1:8089, no CSV")
    args = parser.parse_args(argv)

    out = args.out or PROJECT_ROOT / "reports" / f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    server = None
    if args.host:
        url = args.host
    else:
        server = start_standard(args.server, args.server_args.split(), out / "server.log")
        url = server.url
        print(f"{args.server} server pid {server.pid} at {url} (metrics {server.metrics_url})")

    command = locust_command(url)
    if args.ui:
        command += ["--web-host", "127.0.0.1", "--web-port", "8089"]
    else:
        command += ["--headless", "--csv", str(out / "locust"), "--html",
                    str(out / "report.html"), "--logfile", str(out / "locust.log")]  # fmt: skip
    command += locust_args
    print("$", " ".join(command), flush=True)
    try:
        returncode = subprocess.call(command, cwd=PROJECT_ROOT)
    except KeyboardInterrupt:  # Locust got the same SIGINT and shuts down by itself
        returncode = 130
    finally:
        if server is not None:
            with contextlib.suppress(OSError):
                (out / "server_metrics.txt").write_text(server.metrics_text())
            server.stop()
    if not args.ui:
        print(f"reports in {out} (locust exit code {returncode})")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
