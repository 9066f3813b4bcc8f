# Monitoring: Prometheus (+ Grafana via compose) for watching a load test.
# See docs/monitoring.md.

.PHONY: monitor monitor-check dashboard

## monitor: local Prometheus on 127.0.0.1:9090 if installed, else the compose stack
##          (Prometheus + Grafana); MONITOR=local|compose forces one.
monitor:
	@sh monitoring/monitor.sh

## dashboard: regenerate monitoring/grafana/dashboards/twinchat.json from monitoring/dashboard.py
dashboard: venv
	$(PY) monitoring/dashboard.py

## monitor-check: promtool check + dashboard/provisioning tests + live PromQL test
monitor-check: venv
	$(PY) -m pytest tests/test_monitoring.py
