#!/usr/bin/env bash
# Check the Prometheus alert rules (docs/kubernetes.md#dashboards-and-alerts): `promtool check rules` on
# deploy/prometheus/alerts.yml and `promtool test rules` on deploy/prometheus/alerts_test.yml (each alert
# fired on made-up series, with its labels and annotations).
#
# promtool is installed once into $CACHE/bin (~/.cache/vectorize-worker) with go install from the Go module
# proxy: a large build, about 9 minutes on 2 cores the first time; later runs take a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PROMETHEUS_VERSION=v0.316.0   # the Go module version of Prometheus 3.x's promtool
CACHE=${CACHE:-$HOME/.cache/vectorize-worker}
PROMTOOL=$CACHE/bin/promtool-$PROMETHEUS_VERSION/promtool

die() { echo "prom_check: $*" >&2; exit 1; }

if [ ! -x "$PROMTOOL" ]; then
  if command -v go >/dev/null; then GO=$(command -v go)
  elif [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go
  else die "no Go toolchain (PATH or /usr/local/go/bin): install Go >= 1.24 (https://go.dev/dl) to build promtool"
  fi
  echo "prom_check: installing promtool $PROMETHEUS_VERSION into $(dirname "$PROMTOOL") (once; about 9 minutes on 2 cores)" >&2
  mkdir -p "$(dirname "$PROMTOOL")"
  GOBIN=$(dirname "$PROMTOOL") GOFLAGS=-mod=mod "$GO" install "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION" \
    || die "go install promtool failed (see above); the Go module proxy must be reachable (GOPROXY=$("$GO" env GOPROXY))"
  [ -x "$PROMTOOL" ] || die "go install did not produce $PROMTOOL"
fi

"$PROMTOOL" check rules deploy/prometheus/alerts.yml \
  || die "promtool check rules found problems in deploy/prometheus/alerts.yml (above)"
"$PROMTOOL" test rules deploy/prometheus/alerts_test.yml \
  || die "promtool test rules: an alert of deploy/prometheus/alerts.yml did not fire as deploy/prometheus/alerts_test.yml expects (above)"
echo "prom_check: deploy/prometheus/alerts.yml checks and its tests pass"
