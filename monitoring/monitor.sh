#!/bin/sh
# Start monitoring for a twinchat load test, the lightest way this machine allows:
#   1. a local Prometheus (Debian/Ubuntu: apt-get install prometheus) with
#      monitoring/prometheus.yml, in the foreground;
#   2. else the compose stack (Prometheus + Grafana) in monitoring/docker-compose.yml;
#   3. else say what to install.
# MONITOR=local or MONITOR=compose forces a choice. PROMETHEUS_PORT (9090) and
# PROMETHEUS_DATA (reports/prometheus-data) apply to the local Prometheus.
set -eu

cd "$(dirname "$0")/.."
mode=${MONITOR:-auto}
port=${PROMETHEUS_PORT:-9090}
data=${PROMETHEUS_DATA:-reports/prometheus-data}

compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose "$@"
    else
        docker-compose "$@"
    fi
}

compose_works() {
    { docker compose version >/dev/null 2>&1 || docker-compose version >/dev/null 2>&1; } &&
        docker info >/dev/null 2>&1
}

if [ "$mode" != compose ] && command -v prometheus >/dev/null 2>&1; then
    mkdir -p "$data"
    cat <<MSG
make monitor: starting a LOCAL Prometheus ($(command -v prometheus)) in the foreground.
  config:   monitoring/prometheus.yml (targets in monitoring/targets/*.json:
            threaded 127.0.0.1:9101, async 127.0.0.1:9102, locust 127.0.0.1:9190)
  storage:  $data
  look at:  http://127.0.0.1:$port/targets   (is every target UP?)
            http://127.0.0.1:$port/graph     (try: sum by (job) (chat_connections))
  Grafana:  not started in this mode. Point a Grafana at http://127.0.0.1:$port with
            monitoring/grafana/provisioning (see docs/monitoring.md), or run
            MONITOR=compose make monitor where Docker runs.
  stop:     Ctrl-C
MSG
    exec prometheus \
        --config.file=monitoring/prometheus.yml \
        --storage.tsdb.path="$data" \
        --storage.tsdb.retention.time=2d \
        --web.listen-address="127.0.0.1:$port" \
        --web.enable-lifecycle
fi

if [ "$mode" != local ] && compose_works; then
    cat <<MSG
make monitor: starting the COMPOSE stack (monitoring/docker-compose.yml) in the foreground.
  Grafana:    http://127.0.0.1:3000  (dashboard "twinchat: threaded vs async under load")
  Prometheus: http://127.0.0.1:9090/targets
  targets:    host.docker.internal:9101/9102/9190 (monitoring/compose/targets/*.json);
              on Linux start the servers and Locust with --host 0.0.0.0 so the
              containers can reach them.
  stop:       Ctrl-C, then: docker compose -f monitoring/docker-compose.yml down
MSG
    compose -f monitoring/docker-compose.yml up
    exit $?
fi

cat >&2 <<MSG
make monitor: found neither a usable 'prometheus' binary nor a running Docker with compose.
Install one of:
  - Prometheus:  sudo apt-get install prometheus   (Debian/Ubuntu; or a release from
                 https://prometheus.io/download/ on your PATH), then: make monitor
  - Docker Engine with the compose plugin (https://docs.docker.com/engine/install/),
    start the daemon, then: make monitor   (brings up Prometheus and Grafana)
MSG
[ "$mode" = auto ] || echo "(MONITOR=$mode was requested)" >&2
exit 1
