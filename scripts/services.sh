#!/usr/bin/env bash
# Start/stop every local service the project uses: Kafka, Redis, Chroma, Weaviate, Milvus.
#   scripts/services.sh up|down|status [service ...]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SERVICES=(kafka redis chroma weaviate milvus)
if (($# > 1)); then SERVICES=("${@:2}"); fi   # e.g. `services.sh up kafka redis`
case "${1:-}" in
  up) for s in "${SERVICES[@]}"; do "$HERE/$s.sh" start; done ;;
  down) for s in "${SERVICES[@]}"; do "$HERE/$s.sh" stop || true; done ;;
  status) rc=0; for s in "${SERVICES[@]}"; do "$HERE/$s.sh" status || rc=$?; done; exit $rc ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
