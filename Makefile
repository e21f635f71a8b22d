# ALPS: two commands matter. `make run` starts the server and the Label Studio adapter on
# localhost; `make test` runs the whole test suite. Both bootstrap the project venv (libtorch)
# when needed.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# The same libtorch environment for every cargo call (see scripts/env.sh): changing it would
# make torch-sys rebuild its C++ bindings.
VENV := $(CURDIR)/.venv
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1

.PHONY: run test bench bootstrap build release lint fmt

## run: bootstrap, build release binaries, start alps-server + alps-label-studio (Ctrl-C stops both)
run: bootstrap release
	scripts/run.sh

## test: bootstrap, then format check, clippy, unit and cross-process tests, the end-to-end test
## with a real Label Studio, and the reduced active-learning experiment
test: bootstrap
	scripts/bootstrap.sh scripts/requirements-experiments.txt
	scripts/bootstrap-label-studio.sh
	cargo fmt --all --check
	cargo build --workspace
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo test --workspace
	$(VENV)/bin/python tests/e2e/test_label_studio.py --bin-dir target/debug
	experiments/test_reduced.sh target/debug/alps-server
	experiments/test_reduced_label_studio.sh target/debug/alps-server

## bench: benchmarks, side by side with the reference implementations (results: BENCHMARKS.md)
bench:
	scripts/bootstrap.sh scripts/requirements-bench.txt
	cargo build --release --workspace --bins --lib
	cargo bench -p alps-heuristics-builtin --bench heuristics_vs_baal
	cargo bench -p alps-core --bench mc_dropout
	cargo bench -p alps-system-tests --bench serving
	cargo bench -p alps-system-tests --bench retrain

## bootstrap: create .venv with the pinned torch (idempotent)
bootstrap:
	scripts/bootstrap.sh

build: bootstrap
	cargo build --workspace

release: bootstrap
	cargo build --release --workspace --bins --lib

lint: bootstrap
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all
