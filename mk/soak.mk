# Soak benchmark (issue 6): the chat scenario at about half of each server's limit for
# 10 minutes, one server after the other, each inside the shared heavy-run lock.
#   make soak                                   # both servers, users from the compare report
#   make soak SOAK_USERS=1500 SOAK_DURATION=120 # override
# Reports: reports/soak-<server>-<timestamp>/soak.{md,json}. See docs/hardening.md.

SOAK_DURATION ?= 600
SOAK_USERS ?=
SOAK_ARGS ?=
HEAVY_LOCK ?= /tmp/twinchat-heavy.lock

.PHONY: soak soak-threaded soak-async test-hardening

## soak: chat scenario at ~half each server's limit for 10 min; RSS drift, fds, threads, failures
soak: soak-threaded soak-async

soak-threaded soak-async: soak-%: venv
	flock $(HEAVY_LOCK) $(PY) -m loadtest.soak --server $* --duration $(SOAK_DURATION) \
		$(if $(SOAK_USERS),--users $(SOAK_USERS)) $(SOAK_ARGS)

## test-hardening: hostile input, faults and overload against both servers
test-hardening: venv
	$(PY) -m pytest tests/test_hardening.py tests/test_faults.py
