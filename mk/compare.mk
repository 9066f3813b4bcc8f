# make compare: both servers under the same stepped Locust load; report in reports/<timestamp>/
# (reports/latest points at the newest). See docs/compare.md.

PROFILE ?= quick
SCENARIO ?= chat
COMPARE_ARGS ?=

.PHONY: compare

## compare: threaded vs async under stepped load, report in reports/latest/report.html
##          [PROFILE=smoke|quick|full] [SCENARIO=chat|idle|broadcast|churn] [COMPARE_ARGS=...]
compare: venv
	$(PY) -m loadtest.compare --profile $(PROFILE) --scenario $(SCENARIO) $(COMPARE_ARGS)
