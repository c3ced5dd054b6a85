#!/usr/bin/env bash
# Local Weaviate (built from source with Go, cached outside the clone) on 127.0.0.1:8080, gRPC 50051.
# Weaviate v1.39 binds its gRPC port and its cluster data port (7947) on every interface whatever the settings
# (adapters/handlers/grpc/server.go listens on ":port"): on a machine others can reach, firewall them. The Go
# profiler's port (6060, also every interface) is switched off.
#   scripts/weaviate.sh start|stop|status|build
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="${WEAVIATE_VERSION:-v1.39.0}"
PORT="${WEAVIATE_PORT:-8080}"
GRPC="${WEAVIATE_GRPC_PORT:-50051}"
CACHE="${VW_CACHE:-$HOME/.cache/vectorize-worker}"
BIN="$CACHE/weaviate/$VERSION/weaviate-server"
RUN="${VW_STATE:-$ROOT/.state}/weaviate"
PIDFILE="$RUN/weaviate.pid"
die() { echo "weaviate.sh: $*" >&2; exit 1; }
ready() { curl -fsS "http://127.0.0.1:$PORT/v1/.well-known/ready" >/dev/null 2>&1; }
running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

build() {
  [[ -x "$BIN" ]] && return 0
  command -v go >/dev/null || die "Go is needed to build Weaviate (https://go.dev/dl); or put a weaviate-server binary at $BIN"
  echo "weaviate.sh: building weaviate-server $VERSION with $(go version | cut -d' ' -f3) (a few minutes, once)"
  mkdir -p "$(dirname "$BIN")"
  GOBIN="$(dirname "$BIN")" CGO_ENABLED=0 go install "github.com/weaviate/weaviate/cmd/weaviate-server@$VERSION" \
    || die "building Weaviate failed; see the go output above"
}

start() {
  if ready; then echo "weaviate.sh: Weaviate already answers on 127.0.0.1:$PORT"; return 0; fi
  build
  mkdir -p "$RUN/data"
  echo "weaviate.sh: starting Weaviate $VERSION on 127.0.0.1:$PORT (gRPC $GRPC, log: $RUN/weaviate.log)"
  AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED=true DEFAULT_VECTORIZER_MODULE=none ENABLE_MODULES="" \
  PERSISTENCE_DATA_PATH="$RUN/data" CLUSTER_HOSTNAME=node1 CLUSTER_BIND_ADDR=127.0.0.1 \
  CLUSTER_GOSSIP_BIND_PORT="${WEAVIATE_GOSSIP_PORT:-7946}" CLUSTER_DATA_BIND_PORT="${WEAVIATE_DATA_PORT:-7947}" \
  RAFT_BOOTSTRAP_EXPECT=1 GRPC_PORT="$GRPC" DISABLE_TELEMETRY=true LIMIT_RESOURCES=true QUERY_DEFAULTS_LIMIT=25 \
  GO_PROFILING_DISABLE=true \
    nohup "$BIN" --host 127.0.0.1 --port "$PORT" --scheme http >"$RUN/weaviate.log" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 240); do
    running || { tail -n 30 "$RUN/weaviate.log" >&2; die "Weaviate exited during start-up; see $RUN/weaviate.log"; }
    ready && { echo "weaviate.sh: Weaviate is up (pid $(cat "$PIDFILE"))"; return 0; }
    sleep 0.5
  done
  die "Weaviate was not ready on 127.0.0.1:$PORT within 120 s; see $RUN/weaviate.log"
}

stop() {
  running || { echo "weaviate.sh: not running"; rm -f "$PIDFILE"; return 0; }
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid"
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "weaviate.sh: stopped"; return 0; }; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true; rm -f "$PIDFILE"; echo "weaviate.sh: killed"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  build) build ;;
  status) if ready; then echo "weaviate.sh: running on 127.0.0.1:$PORT"; else echo "weaviate.sh: not running"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|status|build" >&2; exit 2 ;;
esac
