# The two commands (see README.md): `make demo` runs the main job, `make test` runs every test.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo test test-matrix check-k8s-versions control-plane lint doc unit bench chaos image

# The k8s-openapi version features of the supported Kubernetes minors (README: "Kubernetes versions").
K8S_FEATURES := v1_33 v1_34 v1_35 v1_36 v1_37
# The minors `make test-matrix` runs the integration suite against: the oldest and the newest.
MATRIX_VERSIONS ?= 1.33.x 1.37.x

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
	@$(MAKE) --no-print-directory check-k8s-versions
	@echo "== cargo test (unit, doc, integration, trybuild)"
	$(CARGO) test --workspace --all-features --no-fail-fast
	@target=$$($(CARGO) metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/'); \
	  echo "== target dir $$target: $$(du -sh "$$target" | cut -f1) ($$(df -h --output=avail "$$target" | tail -1 | tr -d ' ') free)"

## The library compiles against every supported Kubernetes version (it never picks one itself).
check-k8s-versions:
	@for feature in $(K8S_FEATURES); do \
	  echo "== cargo check -p kuberator --all-features --features k8s-openapi/$$feature"; \
	  $(CARGO) check --quiet -p kuberator --all-features --features "k8s-openapi/$$feature"; \
	done

## The integration suite against the oldest and the newest supported Kubernetes minor (each
## built side by side on first use; not part of `make test`).
test-matrix:
	@for version in $(MATRIX_VERSIONS); do \
	  KUBERATOR_K8S_VERSION=$$version scripts/control-plane.sh ensure >/dev/null; \
	  assets=$$(KUBERATOR_K8S_VERSION=$$version scripts/control-plane.sh path); \
	  echo "== integration tests against $$($$assets/kube-apiserver --version) from $$assets"; \
	  start=$$(date +%s); \
	  KUBERATOR_K8S_VERSION=$$version $(CARGO) test -p kuberator-tests --test integration --no-fail-fast; \
	  echo "== $$($$assets/kube-apiserver --version): integration suite green in $$(( $$(date +%s) - start )) s"; \
	done

## Benchmarks against raw kube-rs (see BENCHMARKS.md).
bench: control-plane
	$(CARGO) run --release -p kuberator-examples --bin bench -- $(ARGS)

## The slow fault scenarios (not part of `make test`): 1,000 objects under API throttling as a
## ServiceAccount, a 5 s API server outage under 500 objects, a 1,000-object churn soak with RSS.
## `make chaos ARGS=throttled` runs one; CHAOS_CHURN_SECS sets the soak's length.
chaos: control-plane
	$(CARGO) run -p kuberator-tests --bin chaos -- $(ARGS)

## A container image of an operator binary without a Docker engine (an OCI archive for
## `docker load`): `make image`, or `make image ARGS="-p my-crate my-operator"`.
image:
	scripts/image.sh $(ARGS)
