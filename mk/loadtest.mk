# Locust load tests (docs/loadtest.md).
#
#   make loadtest SERVER=async SCENARIO=chat USERS=2000 [SPAWN_RATE=100] [RUN_TIME=2m] [PROCESSES=2]
#   make loadtest HOST=ws://127.0.0.1:8002/ws USERS=500     # drive a server that is already running
#   make loadtest SCENARIO=idle USERS=10000 RUN_TIME= LOCUST_ARGS="--step-users 2000 --step-time 60"
#   make locust-ui [SERVER=threaded]                        # web UI at http://127.0.0.1:8089
#   make loadtest-capacity                                  # what one Locust process can generate
#
# Unless HOST is given, the chosen server is started on its standard ports (threaded 8001/9101,
# async 8002/9102, as the monitoring stack expects) and stopped afterwards. Headless runs write
# CSV files, an HTML report, the Locust log, the server log and the server's final /metrics into
# reports/loadtest-<timestamp>/. Extra flags: LOCUST_ARGS for Locust, SERVER_ARGS for the server.

SERVER ?= async
SCENARIO ?= chat
USERS ?= 2000
SPAWN_RATE ?= 100
RUN_TIME ?= 2m
PROCESSES ?=
HOST ?=
LOCUST_ARGS ?=
SERVER_ARGS ?=
LOADTEST_DIR ?= reports/loadtest-$(shell date +%Y%m%d-%H%M%S)

LOADTEST_RUN = $(PY) -m loadtest.run --server $(SERVER) $(if $(HOST),--host $(HOST)) \
	--server-args "$(SERVER_ARGS)"
LOADTEST_LOCUST = --scenario $(SCENARIO) $(if $(PROCESSES),--processes $(PROCESSES)) $(LOCUST_ARGS)

.PHONY: loadtest locust-ui loadtest-capacity

loadtest: venv
	$(LOADTEST_RUN) --out $(LOADTEST_DIR) -- $(LOADTEST_LOCUST) \
		-u $(USERS) -r $(SPAWN_RATE) $(if $(RUN_TIME),-t $(RUN_TIME))

locust-ui: venv
	$(LOADTEST_RUN) --ui -- $(LOADTEST_LOCUST) -u $(USERS) -r $(SPAWN_RATE)

loadtest-capacity: venv
	$(PY) -m loadtest.capacity_bench all
