# make claims: the article's claims a chat climb cannot test (blocking libraries, the GIL with
# CPU-bound work, shared state), each by a scenario built for it; report in
# reports/claims/<timestamp>/ (reports/claims/latest points at the newest). See docs/claims.md.

CLAIMS_ARGS ?=
HEAVY_LOCK ?= /tmp/twinchat-heavy.lock

.PHONY: claims

## claims: blocking-library, CPU-bound and shared-state scenarios, verdicts and plots (~8 min)
##         [CLAIMS_ARGS="--only blocking,cpu,shared --profile smoke --compare DIR"]
claims: venv
	flock $(HEAVY_LOCK) $(PY) -m loadtest.claims $(CLAIMS_ARGS)
