# `make bench [BENCH=smoke|full]`: fan-out throughput, CPU per delivery at a fixed moderate
# rate, connection capacity and handshake rate of both servers and the bare references,
# server pinned to CPU 0, load client on CPU 1.
# Results: reports/bench/<timestamp>/results.{json,md}, reports/bench/latest. See docs/bench.md.
BENCH ?= smoke
BENCH_ARGS ?=

.PHONY: bench

## bench: benchmark suite (BENCH=smoke|full; full takes ~30 min, run it on an idle machine)
bench: venv
	$(PY) -m loadtest.bench --size $(BENCH) $(BENCH_ARGS)
