#!/usr/bin/env bash
# Local Chroma server (the chromadb wheel's `chroma run`) on 127.0.0.1:${CHROMA_PORT:-8000}.
#   scripts/chroma.sh start|stop|status        (CHROMA_BIN, or $VENV/bin/chroma, or chroma on PATH)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PORT="${CHROMA_PORT:-8000}"
RUN="${VW_STATE:-$ROOT/.state}/chroma"
PIDFILE="$RUN/chroma.pid"
die() { echo "chroma.sh: $*" >&2; exit 1; }
answers() { curl -fsS "http://127.0.0.1:$PORT/api/v2/heartbeat" >/dev/null 2>&1; }
running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

bin() {
  if [[ -n "${CHROMA_BIN:-}" ]]; then echo "$CHROMA_BIN"; return; fi
  if [[ -n "${VENV:-}" && -x "$VENV/bin/chroma" ]]; then echo "$VENV/bin/chroma"; return; fi
  command -v chroma || die "the chroma command was not found; run via make (which sets VENV) or pip install chromadb"
}

start() {
  if answers; then echo "chroma.sh: Chroma already answers on 127.0.0.1:$PORT"; return 0; fi
  mkdir -p "$RUN/data"
  local chroma; chroma="$(bin)"
  echo "chroma.sh: starting Chroma on 127.0.0.1:$PORT (log: $RUN/chroma.log)"
  ANONYMIZED_TELEMETRY=False nohup "$chroma" run --path "$RUN/data" --host 127.0.0.1 --port "$PORT" >"$RUN/chroma.log" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 120); do
    running || { tail -n 20 "$RUN/chroma.log" >&2; die "Chroma exited during start-up; see $RUN/chroma.log"; }
    answers && { echo "chroma.sh: Chroma is up (pid $(cat "$PIDFILE"))"; return 0; }
    sleep 0.5
  done
  die "Chroma did not answer on 127.0.0.1:$PORT within 60 s; see $RUN/chroma.log"
}

stop() {
  running || { echo "chroma.sh: not running"; rm -f "$PIDFILE"; return 0; }
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "chroma.sh: stopped"; return 0; }; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true; rm -f "$PIDFILE"; echo "chroma.sh: killed"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if answers; then echo "chroma.sh: running on 127.0.0.1:$PORT"; else echo "chroma.sh: not running"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
