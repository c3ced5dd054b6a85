#!/usr/bin/env bash
# Local Milvus (milvus-lite 2.5.1's engine behind scripts/milvus_server.py) on 127.0.0.1:${MILVUS_PORT:-19530}.
#   scripts/milvus.sh start|stop|status        (uses $VENV/bin/python when set)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PORT="${MILVUS_PORT:-19530}"
RUN="${VW_STATE:-$ROOT/.state}/milvus"
PIDFILE="$RUN/milvus.pid"
PY="${VENV:+$VENV/bin/python}"; PY="${PY:-python3}"
die() { echo "milvus.sh: $*" >&2; exit 1; }
answers() { (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; }
running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
  if answers; then echo "milvus.sh: Milvus already answers on 127.0.0.1:$PORT"; return 0; fi
  mkdir -p "$RUN"
  echo "milvus.sh: starting Milvus Lite on 127.0.0.1:$PORT (log: $RUN/milvus.log)"
  nohup "$PY" "$ROOT/scripts/milvus_server.py" "$RUN/milvus.db" "127.0.0.1:$PORT" >"$RUN/milvus.log" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 120); do
    running || { tail -n 20 "$RUN/milvus.log" >&2; die "Milvus exited during start-up; see $RUN/milvus.log"; }
    answers && { sleep 1; echo "milvus.sh: Milvus is up (pid $(cat "$PIDFILE"))"; return 0; }
    sleep 0.5
  done
  die "Milvus did not answer on 127.0.0.1:$PORT within 60 s; see $RUN/milvus.log"
}

stop() {
  running || { echo "milvus.sh: not running"; rm -f "$PIDFILE"; return 0; }
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "milvus.sh: stopped"; return 0; }; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true; rm -f "$PIDFILE"; echo "milvus.sh: killed"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if answers; then echo "milvus.sh: running on 127.0.0.1:$PORT"; else echo "milvus.sh: not running"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
