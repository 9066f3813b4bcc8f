"""Monitoring: Prometheus config, Grafana provisioning and dashboard, compose file, make monitor.

The static tests check the files' structure. The live test runs both servers
(the async one twice, as two instances of one job), Locust or a WebSocket
client for traffic, and a real Prometheus with the project's prometheus.yml,
then evaluates every PromQL expression of the dashboard through Prometheus'
HTTP API and requires each to return data.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from loadtest.locustcmd import locust_command
from loadtest.serverproc import PROJECT_ROOT, free_port, start_server, stop_process

MONITORING = PROJECT_ROOT / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
COMPOSE_YML = MONITORING / "docker-compose.yml"
DASHBOARD_JSON = MONITORING / "grafana" / "dashboards" / "twinchat.json"
PROVISIONING = MONITORING / "grafana" / "provisioning"

SERVER_JOBS = {"twinchat-threaded": "threaded", "twinchat-async": "async"}
LOCUST_JOB = "locust"
DEFAULT_PORTS = {"twinchat-threaded": 9101, "twinchat-async": 9102, LOCUST_JOB: 9190}
# Metrics only one of the servers has: the dashboard shows them for that one only.
ONLY_FOR = {"chat_event_loop_lag_seconds": "twinchat-async"}
GRAFANA_BUILTINS = {"__interval", "__rate_interval", "__range", "__all", "__name"}

# Bounds for the live test (never assertions about speed).
UNIT = 1.0
READY_TIMEOUT = 30 * UNIT
DATA_TIMEOUT = 90 * UNIT


def load_yaml(path: Path):
    """Parse a YAML file (PyYAML, imported here so the live test runs without it)."""
    import yaml

    with path.open() as f:
        return yaml.safe_load(f)


def dashboard() -> dict:
    return json.loads(DASHBOARD_JSON.read_text())


def panels(dash: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def query_panels(dash: dict) -> list[dict]:
    return [p for p in panels(dash) if p["type"] != "row"]


def variables(dash: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dash["templating"]["list"]}


VAR_RE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")


def used_variables(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VAR_RE.finditer(text)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $var / ${var} / [[var]] as Grafana would with the given values."""

    def repl(m: re.Match) -> str:
        name = next(g for g in m.groups() if g)
        return values[name]

    return VAR_RE.sub(repl, expr)


def provisioned_datasource_uids() -> set[str]:
    uids = set()
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        for ds in load_yaml(path).get("datasources", []):
            uids.add(ds["uid"])
    return uids


def env_references(text: str) -> set[str]:
    """Environment variables Grafana expands in a provisioning file ($VAR, ${VAR})."""
    return set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", text))


def run_promtool(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["promtool", "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus not installed (apt-get install prometheus)",
)


# --- Prometheus configuration ----------------------------------------------------------


@needs_promtool
def test_promtool_accepts_local_config():
    """promtool check config passes on monitoring/prometheus.yml and its target files."""
    result = run_promtool(PROMETHEUS_YML)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output


@needs_promtool
def test_promtool_accepts_compose_config(tmp_path):
    """The same prometheus.yml with the compose target files (as mounted there) passes promtool."""
    shutil.copy(PROMETHEUS_YML, tmp_path / "prometheus.yml")
    shutil.copytree(MONITORING / "compose" / "targets", tmp_path / "targets")
    result = run_promtool(tmp_path / "prometheus.yml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output


def sd_targets(config: dict, base: Path) -> dict[str, list[str]]:
    """job name -> targets listed in its file_sd files under ``base``."""
    jobs = {}
    for job in config["scrape_configs"]:
        targets = []
        for sd in job.get("file_sd_configs", []):
            for pattern in sd["files"]:
                for path in sorted(base.glob(pattern)):
                    for group in json.loads(path.read_text()):
                        targets.extend(group["targets"])
        for static in job.get("static_configs", []):
            targets.extend(static["targets"])
        jobs[job["job_name"]] = targets
    return jobs


def test_prometheus_scrapes_both_servers_and_locust_locally_and_in_compose():
    """Local targets are 127.0.0.1:9101/9102/9190 and compose's the same ports on the host."""
    config = load_yaml(PROMETHEUS_YML)
    assert config["global"]["scrape_interval"] == "2s"
    local = sd_targets(config, MONITORING)
    compose = sd_targets(config, MONITORING / "compose")
    assert local == {job: [f"127.0.0.1:{port}"] for job, port in DEFAULT_PORTS.items()}
    assert compose == {job: [f"host.docker.internal:{port}"] for job, port in DEFAULT_PORTS.items()}


# --- Grafana dashboard and provisioning --------------------------------------------------


def test_dashboard_json_is_generated_from_dashboard_py():
    """The committed dashboard JSON is what monitoring/dashboard.py produces."""
    result = subprocess.run(
        [sys.executable, str(MONITORING / "dashboard.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_every_panel_uses_a_provisioned_datasource():
    """Every panel, target and query variable names a datasource uid that is provisioned."""
    uids = provisioned_datasource_uids()
    assert uids
    dash = dashboard()
    for panel in query_panels(dash):
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t.get("datasource", panel["datasource"])["uid"] in uids, panel["title"]
            assert t["expr"].strip(), panel["title"]
    for var in variables(dash).values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] in uids, var["name"]


def test_panel_ids_are_unique_and_panels_do_not_overlap():
    """No two panels share an id, and their grid positions fit 24 columns without overlap."""
    dash = dashboard()
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x, y in itertools.product(
            range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        ):
            assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
            cells[(x, y)] = p["title"]


def test_template_variables_are_defined_and_well_formed():
    """Each $variable used is defined; query variables use label_values; repeats use a multi var."""
    dash = dashboard()
    defined = variables(dash)
    assert len(defined) == len(dash["templating"]["list"]), "duplicate variable names"
    assert {"job", "instance"} <= defined.keys()
    for panel in query_panels(dash):
        texts = [panel["title"]] + [t["expr"] + t.get("legendFormat", "") for t in panel["targets"]]
        for text in texts:
            unknown = used_variables(text) - defined.keys() - GRAFANA_BUILTINS
            assert not unknown, f"{panel['title']!r} uses undefined {unknown}"
        if "repeat" in panel:
            assert defined[panel["repeat"]]["multi"], panel["title"]
    for var in defined.values():
        if var["type"] == "query":
            assert re.fullmatch(r"label_values\((.+), *(\w+)\)", var["query"]["query"]), var
            assert var["definition"] == var["query"]["query"]
            assert used_variables(var["query"]["query"]) <= defined.keys()
        elif var["type"] == "custom":
            choices = var["query"].split(",")
            assert var["current"]["value"] in choices
            assert [o["value"] for o in var["options"]] == choices
        else:
            pytest.fail(f"unexpected variable type {var['type']}")


def test_provisioning_matches_compose_and_prometheus():
    """Datasource and dashboard provider are valid, and compose supplies what they reference."""
    compose = load_yaml(COMPOSE_YML)
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])

    ds_files = sorted((PROVISIONING / "datasources").glob("*.y*ml"))
    assert ds_files
    for path in ds_files:
        doc = load_yaml(path)
        assert doc["apiVersion"] == 1
        for ds in doc["datasources"]:
            assert ds["type"] == "prometheus" and ds["access"] == "proxy"
            scrape = load_yaml(PROMETHEUS_YML)["global"]["scrape_interval"]
            assert ds["jsonData"]["timeInterval"] == scrape

    provider_files = sorted((PROVISIONING / "dashboards").glob("*.y*ml"))
    assert provider_files
    for path in provider_files:
        doc = load_yaml(path)
        assert doc["apiVersion"] == 1
        for provider in doc["providers"]:
            assert provider["type"] == "file"
            dashboards_dir = provider["options"]["path"]
            for name in env_references(dashboards_dir):
                dashboards_dir = dashboards_dir.replace(f"${{{name}}}", env[name])
            assert mounts["./grafana/dashboards"] == dashboards_dir

    for path in ds_files + provider_files:
        for name in env_references(path.read_text()):
            assert name in env, f"{path.name} needs {name}, which compose does not set"
    assert env["TWINCHAT_PROMETHEUS_URL"] == "http://prometheus:9090"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounts['./grafana/dashboards']}/{DASHBOARD_JSON.name}"


def test_compose_file_parses_and_mounts_existing_files():
    """docker-compose.yml parses, mounts files that exist, and reaches the host's servers."""
    compose = load_yaml(COMPOSE_YML)
    assert set(compose["services"]) == {"prometheus", "grafana"}
    for service in compose["services"].values():
        assert service["image"].count(":") == 1, "pin image versions"
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (MONITORING / source).exists(), volume
            else:
                assert source in compose["volumes"], volume
        for port in service["ports"]:
            assert port.startswith("127.0.0.1:"), "publish on loopback only"
    prometheus = compose["services"]["prometheus"]
    assert "host.docker.internal:host-gateway" in prometheus["extra_hosts"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "./compose/targets:/etc/prometheus/targets:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_make_monitor_says_what_to_install_without_prometheus_or_docker(tmp_path):
    """With neither prometheus nor docker on PATH, make monitor's script exits 1 and says why."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "cat", "dirname", "mkdir"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        ["sh", str(MONITORING / "monitor.sh")],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "apt-get install prometheus" in result.stderr
    assert "compose" in result.stderr


# --- live: every dashboard query against a real Prometheus --------------------------------


class Prometheus:
    """A real Prometheus on a free loopback port, with the project's prometheus.yml."""

    def __init__(self, workdir: Path, targets: dict[str, list[str]]) -> None:
        self.workdir = workdir
        shutil.copy(PROMETHEUS_YML, workdir / "prometheus.yml")
        (workdir / "targets").mkdir()
        for job, addresses in targets.items():
            (workdir / "targets" / f"{job}.json").write_text(json.dumps([{"targets": addresses}]))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str, **params) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: bad query, body says why
            return json.loads(exc.read())

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"Prometheus not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 15)


class ChatTraffic:
    """A few real WebSocket clients per server saying messages in one room until stopped."""

    CLIENTS_PER_SERVER = 3
    SAY_INTERVAL = 0.2  # 5 messages/s per client, far under the 20/s rate limit

    def __init__(self, urls: list[str]) -> None:
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._client, args=(url, f"mon{i}"), daemon=True)
            for url in urls
            for i in range(self.CLIENTS_PER_SERVER)
        ]
        self.ready = threading.Barrier(len(self.threads) + 1, timeout=READY_TIMEOUT)

    def start(self) -> None:
        for t in self.threads:
            t.start()
        self.ready.wait()

    def _client(self, url: str, name: str) -> None:
        try:
            with connect(url, open_timeout=10, close_timeout=5) as ws:
                ws.send(json.dumps({"type": "hello", "name": name}))
                assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
                ws.send(json.dumps({"type": "join", "room": "monitoring"}))
                self._wait_for(ws, lambda m: m["type"] == "joined")
                self.ready.wait()
                for n in itertools.count():
                    if self.stop_event.wait(self.SAY_INTERVAL):
                        break
                    ref = f"{name}-{n}"
                    ws.send(
                        json.dumps({"type": "say", "room": "monitoring", "text": ref, "id": ref})
                    )
                    self._wait_for(ws, lambda m, ref=ref: m.get("id") == ref)
        except BaseException as exc:
            self.errors.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                self.ready.abort()

    @staticmethod
    def _wait_for(ws, predicate) -> dict:
        while True:
            message = json.loads(ws.recv(timeout=10))
            assert message["type"] != "error", message
            if predicate(message):
                return message

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=15)


def locust_missing() -> str | None:
    """Why the project's Locust cannot run here, or None when it can."""
    if importlib.util.find_spec("locust") is None:
        return "Locust is not installed: the dashboard's Locust queries cannot be checked"
    if not (PROJECT_ROOT / "loadtest" / "locustfile.py").exists():
        return "no loadtest/locustfile.py: the dashboard's Locust queries cannot be checked"
    return None


def locust_exporter(server_url: str, port: int, workdir: Path) -> subprocess.Popen:
    """Start the project's Locust (headless, with its exporter on ``port``)."""
    with (workdir / "locust.log").open("wb") as log:
        return subprocess.Popen(
            locust_command(
                server_url,
                "--headless",
                "--only-summary",
                "--users=4",
                "--spawn-rate=4",
                "--run-time=150s",
                "--stop-timeout=5",
                f"--exporter-port={port}",
                "--scenario=chat",
                "--room-size=4",
                "--say-every=1",
                "--room-prefix=monitoring",
            ),
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def grafana_all(values: list[str]) -> str:
    """What Grafana substitutes for a multi-value variable set to All without allValue.

    Grafana escapes regex characters for PromQL with two backslashes (one for the
    string literal, one for the regex); '-' and letters stay as they are.
    """
    escaped = (re.sub(r"([$^*{}\[\]'+?.()|\\])", r"\\\\\1", v) for v in values)
    return "(" + "|".join(escaped) + ")"


LABEL_VALUES = re.compile(r"label_values\((.+), *(\w+)\)")


def resolve_variables(dash: dict, prometheus: Prometheus) -> tuple[dict, dict]:
    """Ask Prometheus for each query variable's values, as Grafana does on load.

    Returns (values of each query variable, text substituted for each variable
    when set to All or to its default).
    """
    values: dict[str, list[str]] = {}
    text: dict[str, str] = {}
    for var in dash["templating"]["list"]:
        if var["type"] == "custom":
            text[var["name"]] = var["current"]["value"]
            continue
        metric, label = LABEL_VALUES.fullmatch(var["query"]["query"]).groups()
        result = prometheus.query(substitute(metric, text))
        assert result["status"] == "success", (var["name"], result)
        found = sorted(
            {s["metric"][label] for s in result["data"]["result"] if label in s["metric"]}
        )
        values[var["name"]] = found
        text[var["name"]] = var["allValue"] or grafana_all(found)
    return values, text


def expressions(dash: dict, text: dict, jobs: list[str]) -> list[tuple[str, str, set[str]]]:
    """(panel title, PromQL with variables substituted, server jobs it must show)."""
    out = []
    for panel in query_panels(dash):
        for t in panel["targets"]:
            if panel.get("repeat") == "job":  # one copy per server, $job = that server
                out.extend(
                    (
                        f"{panel['title']} [{job}]",
                        substitute(t["expr"], {**text, "job": job}),
                        {job},
                    )
                    for job in jobs
                )
            else:
                expr = substitute(t["expr"], text)
                out.append((panel["title"], expr, jobs_expected(expr, jobs)))
    return out


def jobs_expected(expr: str, jobs: list[str]) -> set[str]:
    """Server jobs a query split by job must show: all of them, or the one with that metric."""
    if not re.search(r"by \(job[,)]", expr):
        return set()
    for metric, only in ONLY_FOR.items():
        if metric in expr:
            return {only}
    return set(jobs)


def numbers(result: dict) -> list[dict]:
    """The series of a successful instant query whose value is a number (not NaN)."""
    if result.get("status") != "success":
        return []
    return [s for s in result["data"]["result"] if not math.isnan(float(s["value"][1]))]


def wait_for_scrapes(prometheus: Prometheus, targets: int, scrapes: int) -> None:
    """Wait until all ``targets`` are up and each has been scraped ``scrapes`` times."""
    deadline = time.monotonic() + DATA_TIMEOUT
    while time.monotonic() < deadline:
        up = numbers(prometheus.query("up == 1"))
        counts = numbers(prometheus.query("count_over_time(up[5m])"))
        if len(up) == targets and min(float(s["value"][1]) for s in counts) >= scrapes:
            return
        time.sleep(UNIT)
    down = prometheus.get("/api/v1/targets")
    pytest.fail(f"targets not all scraped {scrapes} times: {json.dumps(down)[:2000]}")


@needs_prometheus
@pytest.mark.timeout(300)
def test_every_dashboard_query_returns_data_from_live_servers(tmp_path):
    """Each PromQL expression of the dashboard parses and returns data from real servers."""
    missing = locust_missing()
    if missing:
        pytest.skip(missing)
    dash = dashboard()
    started = []
    prometheus = traffic = locust = None
    try:
        threaded = start_server("threaded", log_path=tmp_path / "threaded.log")
        started.append(threaded)
        async_a = start_server("async", log_path=tmp_path / "async-a.log")
        started.append(async_a)
        async_b = start_server("async", log_path=tmp_path / "async-b.log")  # 2nd instance
        started.append(async_b)

        exporter_port = free_port()
        locust = locust_exporter(async_a.url, exporter_port, tmp_path)
        targets = {
            "twinchat-threaded": [f"127.0.0.1:{threaded.metrics_port}"],
            "twinchat-async": [f"127.0.0.1:{s.metrics_port}" for s in (async_a, async_b)],
        }
        targets[LOCUST_JOB] = [f"127.0.0.1:{exporter_port}"]
        prometheus = Prometheus(tmp_path, targets)
        prometheus.wait_ready()

        traffic = ChatTraffic([s.url for s in started])
        traffic.start()
        assert not traffic.errors, traffic.errors
        # Enough scrapes that every [30s] rate has several samples of the traffic.
        wait_for_scrapes(prometheus, sum(map(len, targets.values())), scrapes=6)

        values, text = resolve_variables(dash, prometheus)
        jobs = sorted(SERVER_JOBS)
        assert values["job"] == jobs
        assert sorted(values["instance"]) == sorted(
            targets["twinchat-threaded"] + targets["twinchat-async"]
        )
        assert values["loadgen"] == [LOCUST_JOB]

        queries = expressions(dash, text, jobs)
        pending = {expr: (title, needed) for title, expr, needed in queries}
        results: dict[str, dict] = {}
        deadline = time.monotonic() + DATA_TIMEOUT
        while pending and time.monotonic() < deadline:
            assert not traffic.errors, traffic.errors
            for expr, (title, needed) in list(pending.items()):
                results[expr] = result = prometheus.query(expr)
                assert result.get("errorType") != "bad_data", f"{title}: {expr}: {result}"
                series = numbers(result)
                if series and needed <= {s["metric"].get("job") for s in series}:
                    del pending[expr]
            if pending:
                time.sleep(2 * UNIT)
        (tmp_path / "results.json").write_text(json.dumps(results, indent=1))  # for debugging

        assert not pending, "queries without data:\n" + "\n".join(
            f"- {title} (needs {sorted(needed)}): {expr}\n"
            f"    -> {json.dumps(results.get(expr))[:400]}"
            for expr, (title, needed) in pending.items()
        )
        print(f"{len(queries)} dashboard queries ({len(results)} distinct) returned data")

        # Load-generator panels show the load generator only, not the servers.
        for panel in query_panels(dash):
            for t in panel["targets"]:
                if "$loadgen" in t["expr"]:
                    series = numbers(results[substitute(t["expr"], text)])
                    shown = {s["metric"].get("instance") for s in series}
                    assert shown <= {None, *targets[LOCUST_JOB]}, (panel["title"], shown)
        # Every server process is listed, and the two async instances add up to one line.
        running = [s["metric"] for s in numbers(prometheus.query("chat_server_info"))]
        assert sorted(m["implementation"] for m in running) == ["async", "async", "threaded"]
        connections = prometheus.query('sum by (job) (chat_connections{job=~"twinchat-.*"})')
        by_job = {s["metric"]["job"]: float(s["value"][1]) for s in numbers(connections)}
        assert by_job["twinchat-async"] >= 2 * ChatTraffic.CLIENTS_PER_SERVER
        assert by_job["twinchat-threaded"] >= ChatTraffic.CLIENTS_PER_SERVER
    finally:
        if traffic:
            traffic.stop()
        if locust:
            stop_process(locust, signal.SIGINT, 20)
        if prometheus:
            prometheus.stop()
        for server in started:
            server.stop()
        for log in sorted(tmp_path.glob("*.log")):  # shown by pytest if the test failed
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")
