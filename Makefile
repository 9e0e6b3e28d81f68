# raftjob developer tasks. `make` (or `make help`) lists them.
#
# One build profile for everything: tests, the binary and tools all use the dev
# profile (dependencies such as RocksDB are optimised once, see Cargo.toml), so
# `make dev` and `make test` share one build. Never add --release here.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO     ?= cargo
# Extra arguments for the test binaries, e.g. `make test TEST_ARGS=bootstrap`
# (a test-name filter) or `make test TEST_ARGS=--nocapture`.
TEST_ARGS ?=
# make jepsen: seeds per scenario, seconds of faults per run, which scenarios, where.
SEEDS      ?= 3
TIME       ?= 60
SCENARIOS  ?= all
JEPSEN_OUT ?= target/jepsen-lite

.PHONY: help deps dev test lint fmt build clean-dev measure image test-compose jepsen
.PHONY: bench bench-quick schemathesis

help: ## Show this list of targets
	@echo "raftjob make targets:"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: TEST_ARGS='...' is appended to the test binaries' arguments (make test)."

deps: ## Check (and as root, install) the system packages the build needs
	@scripts/ensure-deps.sh

dev: deps ## Build raftjob and start a local three-node cluster on loopback
	$(CARGO) build --bin raftjob
	scripts/dev-cluster.sh

test: deps ## Run the whole test suite (one test at a time: multi-node tests)
	@echo "==> Building the binary and the example worker the integration tests start"
	$(CARGO) build --bins --examples
	@echo "==> Running the raftjob test suite (cargo test --workspace --all-targets, one test at a time;"
	@echo "    it includes jepsen-lite's smoke selection, jepsen-lite/tests/smoke.rs)"
	$(CARGO) test --workspace --all-targets -- --test-threads=1 $(TEST_ARGS)

measure: deps ## Print failover and write-throughput figures (ROUNDS=10 CLIENTS=32 TOTAL=4000)
	@echo "==> Measuring leader failover and job-creation throughput on a local three-node cluster"
	$(CARGO) build --bins --examples
	$(CARGO) test --test measure -- --ignored --nocapture --test-threads=1

bench: deps ## raftjob vs etcd side by side: writes, dispatch, lateness, failover, footprint (OUT=dir)
	$(CARGO) build --bin raftjob
	$(CARGO) run -p raftjob-bench -- $(if $(OUT),--out $(OUT))

bench-quick: deps ## The same, short (about 3 minutes after the build; OUT=dir)
	$(CARGO) build --bin raftjob
	$(CARGO) run -p raftjob-bench -- --quick $(if $(OUT),--out $(OUT))

jepsen: deps ## Every jepsen-lite scenario (SEEDS=3 TIME=60 SCENARIOS=all), a table of verdicts, then the planted bugs
	$(CARGO) build -p raftjob -p jepsen-lite --bin raftjob --bin jepsen-lite
	@mkdir -p $(JEPSEN_OUT)
	@set +e; \
	if [ "$(SCENARIOS)" = all ]; then list=$$(target/debug/jepsen-lite list --names); else list="$(SCENARIOS)"; fi; \
	echo "==> jepsen-lite: $$(echo $$list | wc -w) scenarios x $(SEEDS) seeds, $(TIME) s of faults each, into $(JEPSEN_OUT)/"; \
	for s in $$list; do for seed in $$(seq 1 $(SEEDS)); do \
	  dir=$(JEPSEN_OUT)/$$s/$$seed; mkdir -p $$dir; \
	  target/debug/jepsen-lite run --scenario $$s --seed $$seed --time-limit $(TIME) --out $$dir \
	    > /dev/null 2> $$dir/progress.log; code=$$?; \
	  case $$code in 0) v=valid;; 1) v=INVALID;; *) v=UNKNOWN;; esac; \
	  printf '    %-20s seed %-3s %-8s %s\n' $$s $$seed $$v $$dir/summary.md; \
	done; done
	@echo; status=0; target/debug/jepsen-lite table $(JEPSEN_OUT) || status=1; \
	echo "==> Planted bugs: each must be caught (jepsen-lite/tests/planted.rs)"; \
	$(CARGO) test -p jepsen-lite --test planted -- --ignored --nocapture --test-threads=1 || status=1; \
	exit $$status

schemathesis: deps ## Fuzz the HTTP API from its OpenAPI with schemathesis, one node (SCHEMATHESIS_MAX_EXAMPLES=50)
	$(CARGO) build --bins
	scripts/schemathesis.sh

lint: deps ## Check formatting (rustfmt) and lints (clippy, warnings are errors)
	@echo "==> cargo fmt --check"
	$(CARGO) fmt --all -- --check
	@echo "==> cargo clippy"
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code with rustfmt
	$(CARGO) fmt --all

build: deps ## Build the binaries (dev profile)
	$(CARGO) build --bins

image: deps ## Build the Docker image raftjob:dev (FROM scratch) from target/debug/raftjob
	$(CARGO) build --bin raftjob
	docker/build-image.sh

test-compose: image ## Run the Docker Compose test (tests/compose.rs) against a fresh raftjob:dev
	$(CARGO) test --test compose -- --nocapture --test-threads=1 $(TEST_ARGS)

clean-dev: ## Remove the dev cluster's state (.dev-cluster/: data, logs, secrets)
	rm -rf .dev-cluster
