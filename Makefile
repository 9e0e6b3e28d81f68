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

.PHONY: help deps dev test lint fmt build clean-dev measure image test-compose

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
	@echo "==> Running the raftjob test suite (cargo test --all-targets, one test at a time)"
	$(CARGO) test --all-targets -- --test-threads=1 $(TEST_ARGS)

measure: deps ## Print failover and write-throughput figures (ROUNDS=10 CLIENTS=32 TOTAL=4000)
	@echo "==> Measuring leader failover and job-creation throughput on a local three-node cluster"
	$(CARGO) build --bins --examples
	$(CARGO) test --test measure -- --ignored --nocapture --test-threads=1

lint: deps ## Check formatting (rustfmt) and lints (clippy, warnings are errors)
	@echo "==> cargo fmt --check"
	$(CARGO) fmt --all -- --check
	@echo "==> cargo clippy"
	$(CARGO) clippy --all-targets -- -D warnings

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
