# The two commands (see README.md): `make demo` runs the main job, `make test` runs every test.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo test control-plane lint doc unit bench

## Builds (or reuses) etcd, kube-apiserver, kube-controller-manager and kubectl.
control-plane:
	@scripts/control-plane.sh ensure >/dev/null

## The main job: the demo operator against the embedded local control plane.
demo: control-plane
	$(CARGO) run --quiet --release -p kuberator-examples --bin demo -- $(ARGS)

## Every test: format, lints, docs, unit, doc, integration (real kube-apiserver) and trybuild.
test: control-plane
	@assets=$$(scripts/control-plane.sh path); \
	  echo "== integration tests run against $$($$assets/kube-apiserver --version | sed 's/Kubernetes/kube-apiserver/') and etcd $$($$assets/etcd --version | sed -n 's/etcd Version: //p') from $$assets"
	@echo "== cargo fmt --check"
	$(CARGO) fmt --all -- --check
	@echo "== cargo clippy (all targets, all features, -D warnings)"
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	@echo "== cargo doc (-D warnings)"
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --all-features --quiet
	@echo "== cargo test (unit, doc, integration, trybuild)"
	$(CARGO) test --workspace --all-features --no-fail-fast

## Benchmarks against raw kube-rs (see BENCHMARKS.md).
bench: control-plane
	$(CARGO) run --release -p kuberator-examples --bin bench -- $(ARGS)
