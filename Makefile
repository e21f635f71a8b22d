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

.PHONY: run test bench fuzz bootstrap build release lint fmt

## run: bootstrap, build release binaries, install the Python client (alps-client) into .venv,
## start alps-server + alps-label-studio (Ctrl-C stops both)
run: bootstrap release
	scripts/install-client.sh
	scripts/run.sh

## test: bootstrap, then format check, clippy, unit and cross-process tests (tritonclient and
## perf_analyzer included; the PostgreSQL catalogue against throwaway servers from Debian's
## postgresql package, installed where missing; the object store against moto's S3 from PyPI; the
## deploy/ manifests rendered and validated), the end-to-end test
## with a real Label Studio, and the reduced active-learning experiment
# Incremental caches are for editing; a full test run only pays their disk (GBs) for them.
# (Alternating `make test` with plain cargo builds therefore rebuilds the workspace crates.)
test: export CARGO_INCREMENTAL := 0
test: bootstrap
	scripts/bootstrap.sh scripts/requirements-experiments.txt scripts/requirements-deploy.txt scripts/requirements-objects.txt
	scripts/bootstrap-label-studio.sh
	scripts/bootstrap-triton.sh
	scripts/bootstrap-postgres.sh
	scripts/install-client.sh
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
	cargo bench -p alps-heuristics-builtin --bench diversity
	cargo bench -p alps-core --bench mc_dropout
	cargo bench -p alps-system-tests --bench serving
	scripts/bootstrap-triton.sh
	cargo bench -p alps-system-tests --bench open_inference
	cargo bench -p alps-system-tests --bench retrain
	cargo bench -p alps-system-tests --bench training_share
	scripts/bootstrap-postgres.sh
	scripts/bootstrap.sh scripts/requirements-objects.txt
	PG_FSYNC=on cargo bench -p alps-system-tests --bench catalogue
	PG_FSYNC=on cargo bench -p alps-system-tests --bench catalogue_reads
	cargo bench -p alps-system-tests --bench replicas
	scripts/bootstrap.sh scripts/requirements-experiments.txt
	scripts/install-client.sh
	scripts/bootstrap-label-studio.sh
	$(VENV)/bin/python tests/benches/label_studio_pool.py --tasks 10000

## fuzz: longer fuzzing campaigns with cargo-fuzz (fuzz/): label config, image decoding, webhook
## translation, FUZZ_SECONDS each. Needs a nightly toolchain and cargo-fuzz; without them it says
## how to install them and fails (exit 1). Findings land in fuzz/artifacts/<target>/.
## FUZZ_SANITIZER=address adds ASan (default none: the targets check for panics and failed
## assertions, and an ASan build of every dependency, libtorch bindings included, takes longer).
FUZZ_SECONDS ?= 60
FUZZ_SANITIZER ?= none
FUZZ_TARGETS := label_config image webhook
fuzz: bootstrap
	@if ! cargo +nightly fuzz --version >/dev/null 2>&1; then \
		echo "make fuzz needs nightly and cargo-fuzz: rustup toolchain install nightly --profile minimal && cargo install cargo-fuzz"; \
		exit 1; \
	fi
	mkdir -p fuzz/corpus/image && cp core/tests/fixtures/* fuzz/corpus/image/
	# The fuzz binaries link libtorch (through alps-core) without the server's rpath.
	export LD_LIBRARY_PATH="$$($(VENV)/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__) + "/lib")')"; \
	for target in $(FUZZ_TARGETS); do \
		cargo +nightly fuzz run --fuzz-dir fuzz --sanitizer $(FUZZ_SANITIZER) "$$target" -- \
			-max_total_time=$(FUZZ_SECONDS); \
	done

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
