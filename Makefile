# Weft's entry points. `make test` is what CI runs; `make demo` shows Weft on a fresh machine.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CLUSTER ?= weft

.PHONY: all build test lint unit e2e image xds-clients demo bench bench-xds bench-ca toolchain crds security-doc argocd-testdata cluster-up cluster-down

all: build

## toolchain: the Rust components the checks use (rustfmt, clippy).
toolchain:
	@command -v cargo >/dev/null || { echo "error: Rust is required (https://rustup.rs)"; exit 1; }
	@if command -v rustup >/dev/null; then rustup component add rustfmt clippy >/dev/null 2>&1 || true; fi

build: toolchain
	cargo build --workspace

## test: everything CI checks — format, lints, unit tests, the image, then the e2e suite on a
## fresh cluster.
test: lint unit image e2e

lint: toolchain
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

unit: toolchain
	cargo test --workspace --exclude weft-e2e

e2e: toolchain xds-clients
	e2e/run-tests

## image: the container image as an OCI archive, without Docker (deploy/image/build):
## $${CARGO_TARGET_DIR:-target}/image/weft.oci.tar.
image: toolchain
	deploy/image/build

## xds-clients: the real xDS clients the e2e tests drive (gRPC's Python and Node packages).
xds-clients:
	@python3 -m pip install -q --disable-pip-version-check -r e2e/xds/requirements.txt
	@cd e2e/xds/node && npm install --no-package-lock --no-audit --no-fund --silent

## demo: build, start the local test-bed cluster and show how to use it.
demo: build xds-clients
	e2e/demo

## crds: regenerate crds/ from the Rust types (a unit test fails when they drift).
crds:
	cargo run -q -- crd --out-dir crds
	cargo run -q -- crd --out-dir deploy/helm/weft-operator/crds

## security-doc: regenerate the RBAC and NetworkPolicy tables of docs/security.md from
## config/rbac and the renderer (a unit test fails when they drift).
security-doc:
	WEFT_UPDATE_DOCS=1 cargo test -q -p weft --lib security_doc

## argocd-testdata: capture the Argo CD health testdata (deploy/argocd) from the test bed
## again, with the expected health each stage must get, and rewrite argocd-cm.yaml.
argocd-testdata: toolchain
	WEFT_ARGOCD_CAPTURE=1 WEFT_E2E_CLUSTER=$${WEFT_E2E_CLUSTER:-weft-argocd} e2e/run-tests --test argocd

## bench: operator figures (apply to Ready, memory idle and with 50 MeshInstalls, writes per
## reconcile) on a release build, on a cluster of its own.
bench: toolchain
	cargo build --release -p weft
	cargo build -p weft-e2e --bin bench-operator
	e2e/cluster down weft-bench >/dev/null; e2e/cluster up weft-bench >/dev/null
	WEFT_E2E_CLUSTER=weft-bench WEFT_BIN=$${CARGO_TARGET_DIR:-target}/release/weft \
	  $${CARGO_TARGET_DIR:-target}/debug/bench-operator; rc=$$?; e2e/cluster down weft-bench >/dev/null; exit $$rc

## bench-xds: control-plane figures on a release build (e2e/bench-xds): 1000 services x 2000
## streams, state of the world and delta; 10 000 services x 10 000 streams and the scaling
## curve (written into the README and docs/bench/); the same over three clusters.
## BENCH_XDS_PHASES="main scale multi" picks phases.
bench-xds: toolchain
	cargo build --release -p weft
	cargo build --release -p weft-e2e --bin bench-xds
	e2e/bench-xds

## bench-ca: the certificate service on a release build: 1000 callers at once with 1000
## distinct ServiceAccount tokens (a TokenReview each on first use), then again cached;
## certificates per second, p50/p99, control-plane RSS.
bench-ca: toolchain
	cargo build --release -p weft
	cargo build --release -p weft-e2e --bin bench-ca
	e2e/cluster down weft-bench >/dev/null; e2e/cluster up weft-bench >/dev/null
	WEFT_BIN=$${CARGO_TARGET_DIR:-target}/release/weft $${CARGO_TARGET_DIR:-target}/release/bench-ca weft-bench; \
	  rc=$$?; e2e/cluster down weft-bench >/dev/null; exit $$rc

cluster-up:
	e2e/cluster up $(CLUSTER)

cluster-down:
	e2e/cluster down $(CLUSTER)
