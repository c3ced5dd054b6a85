#!/usr/bin/env bash
# Local Redis on 127.0.0.1:${REDIS_PORT:-6379} (Debian's redis-server), for heartbeats.
#   scripts/redis.sh start|stop|status
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PORT="${REDIS_PORT:-6379}"
RUN="${VW_STATE:-$ROOT/.state}/redis"
PIDFILE="$RUN/redis.pid"
die() { echo "redis.sh: $*" >&2; exit 1; }
ping() { redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG; }

start() {
  if ping; then echo "redis.sh: Redis already answers on 127.0.0.1:$PORT"; return 0; fi
  if ! command -v redis-server >/dev/null; then
    echo "redis.sh: installing Debian's redis-server"
    apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } \
      || die "could not install redis-server; install it (apt-get install redis-server) and retry"
  fi
  mkdir -p "$RUN"
  redis-server --bind 127.0.0.1 --port "$PORT" --daemonize yes --pidfile "$PIDFILE" --dir "$RUN" \
    --logfile "$RUN/redis.log" --save "" --appendonly no
  for _ in $(seq 1 50); do ping && { echo "redis.sh: Redis is up on 127.0.0.1:$PORT"; return 0; }; sleep 0.1; done
  die "Redis did not answer on 127.0.0.1:$PORT; see $RUN/redis.log"
}

stop() {
  if ping; then redis-cli -h 127.0.0.1 -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; fi
  for _ in $(seq 1 50); do ping || { echo "redis.sh: stopped"; rm -f "$PIDFILE"; return 0; }; sleep 0.1; done
  die "Redis on 127.0.0.1:$PORT did not stop"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if ping; then echo "redis.sh: running on 127.0.0.1:$PORT"; else echo "redis.sh: not running"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
