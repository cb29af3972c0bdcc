#!/usr/bin/env bash
# Builds the test bed's binaries from their Go modules, once per version, into the cache.
# Sourced by e2e/cluster; expects E2E_DIR, CACHE and the versions from versions.env.
#
# Modules whose go.mod carries `replace` lines (k8s.io/kubernetes, etcd's server) cannot be
# built with `go install module@version`, so each is built through a small wrapper module
# that requires it and pins every replaced module to its published version.

# go_env: the Go settings every build uses (module cache inside our cache, no VCS stamping).
go_env() {
  export GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build"
  export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN=local
  # Two cores: keep one process per core so the machine stays responsive.
  export GOMAXPROCS="${GOMAXPROCS:-2}"
}

# progress LOG PID: print a line every 20 seconds while PID runs, so long builds are not silent.
progress() {
  local log=$1 pid=$2 start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 20 &
    wait $! 2>/dev/null
    kill -0 "$pid" 2>/dev/null || break
    local pkgs
    pkgs=$(find "$GOCACHE" -newer "$log" -name '*-d' 2>/dev/null | wc -l)
    echo "  … still building ($((SECONDS - start))s, ${pkgs} packages compiled so far)" >&2
  done
}

# run_logged NAME LOG CMD…: run CMD with output to LOG, show progress, fail with the log tail.
run_logged() {
  local name=$1 log=$2; shift 2
  : >"$log"
  "$@" >>"$log" 2>&1 &
  local pid=$!
  progress "$log" "$pid"
  if ! wait "$pid"; then
    echo "error: building $name failed; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    return 1
  fi
}

# wrapper_module DIR MODULE VERSION [REPLACE…]: write a module that requires MODULE@VERSION,
# with REPLACE lines of the form `path => path version`.
wrapper_module() {
  local dir=$1 module=$2 version=$3; shift 3
  mkdir -p "$dir"
  {
    echo "module weft.dev/e2e-build"
    echo
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo
    echo "require $module $version"
    if [ $# -gt 0 ]; then
      echo
      echo "replace ("
      printf '\t%s\n' "$@"
      echo ")"
    fi
  } >"$dir/go.mod"
}

# k8s_replaces VERSION: one replace line per staging module of k8s.io/kubernetes VERSION.
k8s_replaces() {
  local version=$1 mod
  mod=$(go mod download -json "k8s.io/kubernetes@v$version" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$mod" |
    while read -r m; do echo "$m => $m v0.${version#1.}"; done
}

# build_kubernetes: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl.
build_kubernetes() {
  local v=$KUBERNETES_VERSION
  local out="$CACHE/kubernetes-$v"
  [ -x "$out/bin/kubectl" ] && return 0
  echo "building Kubernetes v$v (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) from its Go module; the first build takes 15-25 minutes on 2 cores" >&2
  local src="$CACHE/src/kubernetes-$v"
  rm -rf "$src" && mkdir -p "$src"
  local replaces=()
  mapfile -t replaces < <(k8s_replaces "$v")
  [ ${#replaces[@]} -gt 0 ] || { echo "error: found no staging modules in k8s.io/kubernetes@v$v" >&2; return 1; }
  wrapper_module "$src" k8s.io/kubernetes "v$v" "${replaces[@]}"
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  local pkgs=() c
  for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  local minor=${v#1.}; minor=${minor%%.*}
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  mkdir -p "$out/bin.tmp"
  (cd "$src" && run_logged "Kubernetes v$v" "$src/build.log" \
    go build -trimpath -ldflags "$ld" -o "$out/bin.tmp/" "${pkgs[@]}") || return 1
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
}

# build_etcd: etcd's server binary.
build_etcd() {
  local v=$ETCD_VERSION
  local out="$CACHE/etcd-$v"
  [ -x "$out/bin/etcd" ] && return 0
  echo "building etcd v$v from its Go module" >&2
  local src="$CACHE/src/etcd-$v"
  rm -rf "$src" && mkdir -p "$src"
  local m replaces=()
  for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do
    replaces+=("go.etcd.io/etcd/$m => go.etcd.io/etcd/$m v$v")
  done
  wrapper_module "$src" go.etcd.io/etcd/server/v3 "v$v" "${replaces[@]}"
  mkdir -p "$out/bin.tmp"
  (cd "$src" && run_logged "etcd v$v" "$src/build.log" \
    go build -trimpath -ldflags "-s -w" -o "$out/bin.tmp/etcd" go.etcd.io/etcd/server/v3) || return 1
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
}

# build_kwok: kwok, the simulated kubelet.
build_kwok() {
  local v=$KWOK_VERSION
  local out="$CACHE/kwok-$v"
  [ -x "$out/bin/kwok" ] && return 0
  echo "building kwok v$v from its Go module" >&2
  local src="$CACHE/src/kwok-$v"
  rm -rf "$src" && mkdir -p "$src"
  wrapper_module "$src" sigs.k8s.io/kwok "v$v"
  mkdir -p "$out/bin.tmp"
  (cd "$src" && run_logged "kwok v$v" "$src/build.log" \
    go build -trimpath -ldflags "-s -w" -o "$out/bin.tmp/kwok" sigs.k8s.io/kwok/cmd/kwok) || return 1
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
}

# build_helm: helm, to template the chart in deploy/ (its go.mod has no replace lines).
build_helm() {
  local v=$HELM_VERSION
  local out="$CACHE/helm-$v"
  [ -x "$out/bin/helm" ] && return 0
  echo "building helm v$v from its Go module" >&2
  local src="$CACHE/src/helm-$v"
  rm -rf "$src" && mkdir -p "$src"
  wrapper_module "$src" helm.sh/helm/v4 "v$v"
  mkdir -p "$out/bin.tmp"
  (cd "$src" && run_logged "helm v$v" "$src/build.log" \
    go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v$v" -o "$out/bin.tmp/helm" helm.sh/helm/v4/cmd/helm) || return 1
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
}

# build_registry: the distribution registry, which the image test pushes to and pulls from
# on 127.0.0.1.
build_registry() {
  local v=$DISTRIBUTION_VERSION
  local out="$CACHE/registry-$v"
  [ -x "$out/bin/registry" ] && return 0
  echo "building the distribution registry v$v from its Go module" >&2
  local src="$CACHE/src/registry-$v"
  rm -rf "$src" && mkdir -p "$src"
  wrapper_module "$src" github.com/distribution/distribution/v3 "v$v"
  mkdir -p "$out/bin.tmp"
  (cd "$src" && run_logged "registry v$v" "$src/build.log" \
    go build -trimpath -ldflags "-s -w" -o "$out/bin.tmp/registry" github.com/distribution/distribution/v3/cmd/registry) || return 1
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
}

# build_argocd_health: our harness (e2e/argocd/main.go) that evaluates the Argo CD health
# checks in deploy/argocd with Argo CD's own Lua health code, built against the argo-cd module
# (v3.2.x: from v3.3 on, gitops-engine is a nested module the proxy does not serve). Rebuilt
# when the version or the harness changes.
build_argocd_health() {
  local v=$ARGOCD_VERSION
  local out="$CACHE/argocd-health-$v"
  [ -x "$out/bin/weft-argocd-health" ] && cmp -s "$E2E_DIR/argocd/main.go" "$out/main.go" && return 0
  echo "building the Argo CD health harness against argo-cd v$v from its Go module; the first build takes about 5 minutes on 2 cores" >&2
  local src="$CACHE/src/argocd-health-$v"
  rm -rf "$src" && mkdir -p "$src"
  # argo-cd's own `replace` lines, which a requiring module must repeat.
  local replaces=()
  mapfile -t replaces < <(gomod_replaces github.com/argoproj/argo-cd/v3 "v$v")
  [ ${#replaces[@]} -gt 0 ] || { echo "error: found no replace lines in argo-cd v$v" >&2; return 1; }
  wrapper_module "$src" github.com/argoproj/argo-cd/v3 "v$v" "${replaces[@]}"
  cp "$E2E_DIR/argocd/main.go" "$src/main.go"
  mkdir -p "$out/bin.tmp"
  (cd "$src" && run_logged "Argo CD health harness (argo-cd v$v)" "$src/build.log" \
    go build -trimpath -ldflags "-s -w" -o "$out/bin.tmp/weft-argocd-health" .) || return 1
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
  cp "$E2E_DIR/argocd/main.go" "$out/main.go"
}

# build_envoy_validate: our validator (e2e/envoy-validate/main.go), which runs
# go-control-plane's generated protoc-gen-validate checks over served xDS resources. Rebuilt
# when the version or the validator changes.
build_envoy_validate() {
  local v=$GO_CONTROL_PLANE_ENVOY_VERSION
  local out="$CACHE/envoy-validate-$v"
  [ -x "$out/bin/weft-envoy-validate" ] && cmp -s "$E2E_DIR/envoy-validate/main.go" "$out/main.go" && return 0
  echo "building the Envoy config validator against go-control-plane/envoy v$v from its Go module (about 2 minutes on 2 cores the first time)" >&2
  local src="$CACHE/src/envoy-validate-$v"
  rm -rf "$src" && mkdir -p "$src"
  wrapper_module "$src" github.com/envoyproxy/go-control-plane/envoy "v$v"
  cp "$E2E_DIR/envoy-validate/main.go" "$src/main.go"
  mkdir -p "$out/bin.tmp"
  (cd "$src" && run_logged "Envoy config validator (go-control-plane/envoy v$v)" "$src/build.log" \
    go build -trimpath -ldflags "-s -w" -o "$out/bin.tmp/weft-envoy-validate" .) || return 1
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
  cp "$E2E_DIR/envoy-validate/main.go" "$out/main.go"
}

# build_grpc_go_client: our proxyless xDS client (e2e/grpc-go/main.go), built against grpc-go,
# for the tests that prove Weft's xDS with clients we did not write. Rebuilt when the version or
# the client changes.
build_grpc_go_client() {
  local v=$GRPC_GO_VERSION
  local out="$CACHE/grpc-go-client-$v"
  [ -x "$out/bin/weft-grpc-go-client" ] && cmp -s "$E2E_DIR/grpc-go/main.go" "$out/main.go" && return 0
  echo "building the grpc-go xDS client against google.golang.org/grpc v$v from its Go module (about 2 minutes on 2 cores the first time)" >&2
  local src="$CACHE/src/grpc-go-client-$v"
  rm -rf "$src" && mkdir -p "$src"
  wrapper_module "$src" google.golang.org/grpc "v$v"
  cp "$E2E_DIR/grpc-go/main.go" "$src/main.go"
  mkdir -p "$out/bin.tmp"
  (cd "$src" && run_logged "grpc-go xDS client (google.golang.org/grpc v$v)" "$src/build.log" \
    go build -trimpath -ldflags "-s -w" -o "$out/bin.tmp/weft-grpc-go-client" .) || return 1
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
  cp "$E2E_DIR/grpc-go/main.go" "$out/main.go"
}

# gomod_replaces MODULE VERSION: the `replace` lines of MODULE@VERSION's go.mod, for a wrapper
# module. A replace by a local directory (`./api`) names a nested module of the same release:
# it becomes that module's published version.
gomod_replaces() {
  local module=$1 version=$2 mod
  mod=$(go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  [ -n "$mod" ] || { echo "error: cannot download $module@$version" >&2; return 1; }
  # One line per replace, from `replace a => b v` and from `replace ( … )` blocks.
  awk '/^replace \(/ { inblock = 1; next }
       inblock && /^\)/ { inblock = 0; next }
       inblock && /=>/ { print; next }
       /^replace .*=>/ { sub(/^replace /, ""); print }' "$mod" |
    sed -E 's#//.*##; s/^[[:space:]]+//; s/[[:space:]]+$//' |
    while read -r from arrow to ver; do
      [ "$arrow" = "=>" ] || continue
      case $to in
        ./* | ../*) echo "$from => $from $version" ;;
        *) echo "$from => $to $ver" ;;
      esac
    done
}

# build_flux_controller NAME MODULE VERSION: one Flux controller (its main package is the
# module's root), through a wrapper module of its own: the two controllers pin different
# versions of shared dependencies, so one wrapper for both would build neither as released.
build_flux_controller() {
  local name=$1 module=$2 v=$3
  local out="$CACHE/$name-$v"
  [ -x "$out/bin/$name" ] && return 0
  echo "building Flux's $name v$v from its Go module (5-10 minutes on 2 cores the first time)" >&2
  local src="$CACHE/src/$name-$v"
  rm -rf "$src" && mkdir -p "$src"
  local replaces=()
  mapfile -t replaces < <(gomod_replaces "$module" "v$v")
  [ ${#replaces[@]} -gt 0 ] || { echo "error: found no replace lines in $module@v$v" >&2; return 1; }
  wrapper_module "$src" "$module" "v$v" "${replaces[@]}"
  mkdir -p "$out/bin.tmp"
  (cd "$src" && run_logged "$name v$v" "$src/build.log" \
    go build -trimpath -ldflags "-s -w" -o "$out/bin.tmp/$name" "$module") || return 1
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
}

# build_flux: Flux's source-controller and kustomize-controller, for the Flux end-to-end test.
# Newer releases need a newer Go than the bed's; source-controller v1.9.4 and later need a
# fluxcd/pkg/artifact version the module proxy does not serve.
build_flux() {
  build_flux_controller source-controller github.com/fluxcd/source-controller "$FLUX_SOURCE_CONTROLLER_VERSION" &&
    build_flux_controller kustomize-controller github.com/fluxcd/kustomize-controller "$FLUX_KUSTOMIZE_CONTROLLER_VERSION"
}

# fetch_module_dir MODULE VERSION: the module's source directory in the module cache.
fetch_module_dir() {
  go mod download -json "$1@$2" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p'
}

# fetch_assets: files the bed takes from Go modules as published: kwok's default stages (node
# initialise, heartbeat with lease, pod ready, complete, delete) and the Gateway API CRDs
# (standard channel).
fetch_assets() {
  local dir
  if [ ! -f "$CACHE/kwok-$KWOK_VERSION/stages.yaml" ]; then
    dir=$(cd "$CACHE" && fetch_module_dir sigs.k8s.io/kwok "v$KWOK_VERSION")
    local stage
    for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
      pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
      echo "---"
      cat "$dir/kustomize/stage/$stage.yaml"
    done >"$CACHE/kwok-$KWOK_VERSION/stages.yaml.tmp"
    mv "$CACHE/kwok-$KWOK_VERSION/stages.yaml.tmp" "$CACHE/kwok-$KWOK_VERSION/stages.yaml"
  fi
  local gw="$CACHE/gateway-api-$GATEWAY_API_VERSION"
  if [ ! -d "$gw/crds" ]; then
    echo "fetching the Gateway API v$GATEWAY_API_VERSION CRDs from its Go module" >&2
    dir=$(cd "$CACHE" && fetch_module_dir sigs.k8s.io/gateway-api "v$GATEWAY_API_VERSION")
    [ -d "$dir/config/crd/standard" ] || { echo "error: no config/crd/standard in $dir" >&2; return 1; }
    rm -rf "$gw" && mkdir -p "$gw/crds.tmp"
    cp "$dir"/config/crd/standard/*.yaml "$gw/crds.tmp/"
    mv "$gw/crds.tmp" "$gw/crds"
  fi
  fetch_flux_crds
}

# fetch_flux_crds: the CRDs of Flux's two controllers as their modules publish them: every
# source kind (kustomize-controller watches GitRepository, OCIRepository, Bucket and
# ExternalArtifact, and source-controller all of its kinds) and Kustomization.
fetch_flux_crds() {
  local out="$CACHE/flux-crds-$FLUX_SOURCE_CONTROLLER_VERSION-$FLUX_KUSTOMIZE_CONTROLLER_VERSION"
  [ -d "$out/crds" ] && return 0
  echo "fetching Flux's CRDs from the source-controller and kustomize-controller modules" >&2
  local m v dir
  rm -rf "$out" && mkdir -p "$out/crds.tmp"
  for m in source-controller:$FLUX_SOURCE_CONTROLLER_VERSION kustomize-controller:$FLUX_KUSTOMIZE_CONTROLLER_VERSION; do
    v=${m#*:}
    dir=$(cd "$CACHE" && fetch_module_dir "github.com/fluxcd/${m%%:*}" "v$v")
    [ -d "$dir/config/crd/bases" ] || { echo "error: no config/crd/bases in $dir" >&2; return 1; }
    cp "$dir"/config/crd/bases/*.yaml "$out/crds.tmp/"
  done
  chmod u+w "$out"/crds.tmp/*.yaml
  mv "$out/crds.tmp" "$out/crds"
}

# build_all: everything the bed and the tests need, built in sequence (two cores: parallel
# builds only thrash); with WEFT_E2E_CLUSTER_ONLY=1, only the cluster's own components.
build_all() {
  command -v go >/dev/null || { echo "error: Go is required to build the test bed (https://go.dev/dl/)" >&2; return 1; }
  go_env
  mkdir -p "$CACHE"
  build_etcd && build_kwok && fetch_assets && build_kubernetes || return 1
  # What only tests use (the chart, the image, the GitOps tools): `make demo` skips it.
  [ "${WEFT_E2E_CLUSTER_ONLY:-0}" = 1 ] && return 0
  build_helm && build_registry && build_argocd_health && build_flux && build_envoy_validate &&
    build_grpc_go_client
}
