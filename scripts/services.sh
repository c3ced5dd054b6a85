#!/usr/bin/env bash
# Start/stop every local service the project uses (today: Apache Kafka).
#   scripts/services.sh up|down|status
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
  up) "$HERE/kafka.sh" start ;;
  down) "$HERE/kafka.sh" stop ;;
  status) "$HERE/kafka.sh" status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
