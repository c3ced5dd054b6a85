#!/usr/bin/env bash
# The container test (docs/containers.md): builds the local base images (debootstrap'd Debian, Python, Kafka,
# Redis, Weaviate), the worker's image from ./Dockerfile and runs docker-compose.yml with podman-compose:
# 3 workers, tasks sent with `faust -A app send` from inside a worker and by a client on the host, every task
# checked in Weaviate, every worker has taken work, one worker killed and its partitions taken over, then
# everything removed (containers, pods, networks, volumes; the images stay as the build cache).
#   scripts/containers.sh            (root; `make test-containers`)
# Skips (exit 0, says why) only when podman is missing and apt-get cannot install it.
# Environment: VW_CACHE (~/.cache/vectorize-worker), VENV (the project's virtualenv: the host-side client),
# TASKS (tasks per batch from the host, 24), KEEP=1 (leave the stack up for a look; tear down with `down`).
#   scripts/containers.sh down       (remove what a run left behind)
set -euo pipefail
export LC_ALL=C                            # sort and join below agree on the order
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
C=deploy/containers
CACHE="${VW_CACHE:-$HOME/.cache/vectorize-worker}"
STATE="${VW_STATE:-$ROOT/.state}/containers"
P=vwtest                                   # compose project name: every container carries its label
N=${TASKS:-24}
COLL=containers_test; CLS=Containers_test  # the collection the test's tasks go to (Weaviate class name)
export CONTAINERS_CONF="$ROOT/$C/containers.conf"
BASE=localhost/vw-base
export KAFKA_IMAGE=$BASE/kafka:4.1.1 REDIS_IMAGE=$BASE/redis:7 WEAVIATE_IMAGE=$BASE/weaviate:1.39.0
export WORKER_IMAGE=localhost/vectorize-worker:test WORKER_SESSION_TIMEOUT=10
unset WORKER_HOST_IP                        # the test checks the workers' ports are on 127.0.0.1, the default
VENV="${VENV:-$CACHE/venv-$(sha256sum requirements.lock | cut -c1-12)}"
t0=$(date +%s)
step() { echo "== containers.sh +$(( $(date +%s) - t0 ))s: $*"; }
die() { echo "containers.sh: FAILED: $*" >&2; exit 1; }
mkdir -p "$STATE"

# --- tools -------------------------------------------------------------------------------------------------
tools() {
  local need=() b
  for b in podman runc debootstrap; do command -v $b >/dev/null || need+=("$b"); done
  if ((${#need[@]})); then
    step "installing ${need[*]} (apt-get)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           podman runc debootstrap >/dev/null; }; then
      command -v podman >/dev/null || { echo "containers.sh: SKIPPED: podman is not installed and apt-get could not" \
        "install it (run as root on Debian/Ubuntu, or install podman, runc and debootstrap yourself)"; exit 0; }
    fi
  fi
  for b in podman runc debootstrap; do
    command -v $b >/dev/null || die "$b is missing after apt-get install; install it (apt-get install $b)"
  done
  # Debian 12's podman uses CNI networks, whose containers find each other by name (kafka:9092) only with
  # the dnsname plugin; without it the workers fail with "Name or service not known"
  if [[ $(podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null) == cni ]] && [[ ! -x /usr/lib/cni/dnsname ]]; then
    step "installing the CNI dnsname plugin (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      golang-github-containernetworking-plugin-dnsname >"$STATE/apt.log" 2>&1 \
      || die "apt-get could not install golang-github-containernetworking-plugin-dnsname (container name resolution)"
  fi
  local cv="$CACHE/compose-venv"
  if [[ ! -x $cv/bin/podman-compose ]]; then
    step "installing podman-compose 1.6.0 into $cv"
    rm -rf "$cv" && python3 -m venv "$cv" && "$cv/bin/pip" install -q podman-compose==1.6.0 \
      || die "pip could not install podman-compose==1.6.0 into $cv; see pip's output above"
  fi
  PC=("$cv/bin/podman-compose" -p $P -f docker-compose.yml)
}

# --- teardown: by label, since podman-compose 1.6's `down` removes only replica 1 of a scaled service ------
teardown() {
  local ids
  # workers first: a worker whose Kafka is gone waits out its shutdown timeout
  ids=$(podman ps -aq --filter label=com.docker.compose.project=$P --filter label=com.docker.compose.service=worker)
  [[ -z $ids ]] || podman rm -f -t 20 $ids >/dev/null 2>&1 || true
  ids=$(podman ps -aq --filter label=com.docker.compose.project=$P)
  [[ -z $ids ]] || podman rm -f -t 10 $ids >/dev/null 2>&1 || true
  podman pod rm -f "pod_$P" >/dev/null 2>&1 || true
  ids=$(podman network ls -q --filter label=com.docker.compose.project=$P); ids+=" $(podman network ls -q --filter name="^${P}_")"
  [[ -z ${ids// /} ]] || podman network rm -f $ids >/dev/null 2>&1 || true
  ids=$(podman volume ls -q --filter label=com.docker.compose.project=$P); ids+=" $(podman volume ls -q --filter name="^${P}_")"
  [[ -z ${ids// /} ]] || podman volume rm -f $ids >/dev/null 2>&1 || true
}
leftovers() {
  { podman ps -aq --filter label=com.docker.compose.project=$P; podman pod ls -q --filter name="^pod_$P\$"
    podman network ls -q --filter name="^${P}_"; podman volume ls -q --filter name="^${P}_"; } 2>/dev/null
}

if [[ ${1:-} == down ]]; then
  export CONTAINERS_CONF; teardown
  [[ -z $(leftovers) ]] || die "left behind: $(leftovers | tr '\n' ' ')"
  echo "containers.sh: nothing of project $P is left"; exit 0
fi

# --- images ------------------------------------------------------------------------------------------------
build() {  # build TAG CONTEXT [podman build args...]
  local tag=$1 ctx=$2; shift 2
  podman build --pull=never --format docker -t "$tag" "$@" "$ctx" >"$STATE/build-${tag//[\/:]/_}.log" 2>&1 \
    || { tail -n 40 "$STATE/build-${tag//[\/:]/_}.log" >&2; die "building $tag from $ctx failed; log: $STATE/build-${tag//[\/:]/_}.log"; }
}
images() {
  step "base images"
  if ! podman image exists $BASE/debian:bookworm; then
    step "debootstrap Debian 12 (minbase) -> $BASE/debian:bookworm"
    rm -rf "$STATE/rootfs"
    debootstrap --variant=minbase bookworm "$STATE/rootfs" >"$STATE/debootstrap.log" 2>&1 \
      || { tail -n 20 "$STATE/debootstrap.log" >&2; die "debootstrap failed; log: $STATE/debootstrap.log"; }
    rm -rf "$STATE/rootfs"/var/cache/apt/archives/*.deb "$STATE/rootfs"/var/lib/apt/lists/*
    tar -C "$STATE/rootfs" -c . | podman import -q - $BASE/debian:bookworm >/dev/null
    rm -rf "$STATE/rootfs"
  fi
  local ctx="$STATE/ctx" ca="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
  [[ -s $ca ]] || die "no CA bundle at $ca (set SSL_CERT_FILE to the machine's bundle)"
  rm -rf "$ctx" && mkdir -p "$ctx" && cp -r $C/python $C/kafka $C/redis $C/weaviate "$ctx/"
  cp "$ca" "$ctx/python/ca-bundle.crt"
  build $BASE/python:3.11 "$ctx/python"
  build "$REDIS_IMAGE" "$ctx/redis"
  scripts/kafka.sh fetch >/dev/null
  cp -r "$CACHE/kafka-4.1.1/libs" "$ctx/kafka/libs"
  build "$KAFKA_IMAGE" "$ctx/kafka"
  scripts/weaviate.sh build
  cp "$CACHE/weaviate/v1.39.0/weaviate-server" "$ctx/weaviate/"
  build "$WEAVIATE_IMAGE" "$ctx/weaviate"
  rm -rf "$ctx"
  step "worker image (./Dockerfile) -> $WORKER_IMAGE"
  build "$WORKER_IMAGE" . --build-arg BASE_IMAGE=$BASE/python:3.11
  podman image prune -f >/dev/null 2>&1 || true   # the images an earlier build replaced (7 GB each)
  podman image ls "$WORKER_IMAGE" --format "{{.Repository}}:{{.Tag}} {{.Size}}"
}

# --- the stack ---------------------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
workers() { podman ps -q --filter label=com.docker.compose.project=$P --filter label=com.docker.compose.service=worker; }
# the image's HEALTHCHECK (/readyz), run on demand: podman runs it on a timer only where systemd is
ready() { podman healthcheck run "$1" >/dev/null 2>&1; }
stored() { python3 $C/check_weaviate.py "http://127.0.0.1:$WEAVIATE_HOST_PORT" $CLS; }
wait_stored() {  # wait_stored FILE_OF_"task partition"_LINES SECONDS
  local want have
  want=$(cut -d' ' -f1 "$1" | sort -u)
  for _ in $(seq 1 "$(( $2 / 3 ))"); do
    have=$(stored | cut -d' ' -f1 | sort -u)
    [[ -z $(comm -23 <(echo "$want") <(echo "$have")) ]] && return 0
    sleep 3
  done
  echo "not stored: $(comm -23 <(echo "$want") <(echo "$have") | tr '\n' ' ')" >&2; return 1
}
fail_logs() { local w; for w in $(workers); do echo "--- worker $w"; podman logs --tail 30 "$w" 2>&1; done; die "$1"; }

finish() {
  local rc=$?
  step "teardown"; teardown
  if [[ -n $(leftovers) ]]; then
    echo "containers.sh: FAILED: left behind: $(leftovers | tr '\n' ' ')(scripts/containers.sh down)" >&2; rc=1
  fi
  step "done (exit $rc)"; exit $rc
}

main() {
  tools
  step "tools: $(podman --version), $("${PC[0]}" --version 2>/dev/null | head -1)"
  images
  step "clean start (removing what an earlier run left)"
  teardown
  trap finish EXIT
  KAFKA_HOST_PORT=$(free_port); WEAVIATE_HOST_PORT=$(free_port); export KAFKA_HOST_PORT WEAVIATE_HOST_PORT
  step "docker-compose up -d --scale worker=3 (Kafka on 127.0.0.1:$KAFKA_HOST_PORT, Weaviate on 127.0.0.1:$WEAVIATE_HOST_PORT)"
  "${PC[@]}" config >/dev/null || die "podman-compose rejects docker-compose.yml"
  "${PC[@]}" up -d --no-build --pull never --scale worker=3 >"$STATE/up.log" 2>&1 || { cat "$STATE/up.log"; die "compose up failed"; }
  local ws ok w i
  for i in $(seq 1 100); do
    ws=($(workers)); ok=0
    for w in "${ws[@]}"; do ready "$w" && ok=$((ok + 1)); done
    [[ ${#ws[@]} == 3 && $ok == 3 ]] && break; sleep 3
  done
  [[ ${#ws[@]} == 3 && $ok == 3 ]] || fail_logs "3 ready workers expected within 300 s, ${#ws[@]} running, $ok ready"
  declare -A host
  for w in "${ws[@]}"; do host[$w]=$(podman inspect "$w" --format '{{.Config.Hostname}}'); done
  step "3 workers ready: ${host[*]} (restarts on the cold start: $(podman inspect "${ws[@]}" --format '{{.RestartCount}}' | paste -sd' '))"
  local where limit
  for w in "${ws[@]}"; do  # published on the host's loopback only (docker-compose.yml, WORKER_HOST_IP)
    for i in 6066 9091; do
      where=$(podman port "$w" $i/tcp | head -1)
      [[ $where == 127.0.0.1:* ]] || die "worker ${host[$w]} publishes port $i on '$where', not on 127.0.0.1"
    done
  done
  limit=$(curl -sf "http://$where/metrics" | awk '/^worker_memory_limit_bytes /{print $2}')
  [[ -n $limit ]] || die "no worker_memory_limit_bytes on http://$where/metrics"
  step "web and metrics ports on 127.0.0.1 only; http://$where/metrics: worker_memory_limit_bytes $limit"
  step "the shared models volume holds: $(podman exec "${ws[0]}" sh -c 'cd /models && ls -d onnx/* hf 2>/dev/null | paste -sd" "')"

  local py="$VENV/bin/python" sent="$STATE/sent.txt"
  [[ -x $py ]] && "$py" -c 'import aiokafka' 2>/dev/null || die "the host-side client needs the project's virtualenv (VENV=$VENV; make venv, or run make test-containers)"
  : > "$sent"
  step "sending 3 tasks with faust -A app send from inside ${host[${ws[0]}]}"
  for i in 0 1 2; do
    # (the sender serves no web port: 127.0.0.1 spares it the warning about 0.0.0.0 without a token)
    podman exec -e VECTORIZE_WORKER_WEB_HOST=127.0.0.1 "${ws[0]}" faust -A app send vectorization-tasks --key "ct-in-$i" \
      "{\"task_type\": \"text_vectorization\", \"task_id\": \"ct-in-$i\", \"data\": \"sent from inside $i\", \"collection\": \"$COLL\"}" \
      >"$STATE/send.log" 2>&1 || { cat "$STATE/send.log"; die "faust -A app send inside ${ws[0]} failed"; }
    echo "ct-in-$i ?" >> "$sent"
  done
  step "sending $N tasks from the host to 127.0.0.1:$KAFKA_HOST_PORT"
  "$py" $C/send_tasks.py "127.0.0.1:$KAFKA_HOST_PORT" ct-a "$N" $COLL >> "$sent" || die "the host-side client could not send"
  wait_stored "$sent" 180 || fail_logs "tasks missing in Weaviate 180 s after sending"
  local by_worker; by_worker=$(stored | cut -d' ' -f2 | sort | uniq -c | awk '{print $2"="$1}' | paste -sd' ')
  step "all $((N + 3)) tasks stored in Weaviate; per worker: $by_worker"
  for w in "${ws[@]}"; do
    grep -q "${host[$w]}=" <<<"$by_worker" || fail_logs "worker ${host[$w]} took no task"
  done

  # the partitions the victim worked on: from the host-sent tasks it stored
  local victim=${ws[2]} parts
  parts=$(join <(sort "$sent") <(stored | sort) | awk -v h="${host[$victim]}" '$3 == h && $2 != "?" {print $2}' | sort -un | paste -sd' ')
  [[ -n $parts ]] || die "no partition known for ${host[$victim]}"
  step "killing worker ${host[$victim]} (it had partitions $parts)"
  podman rm -f -t 0 "$victim" >/dev/null 2>&1
  local after="$STATE/sent-after.txt"
  "$py" $C/send_tasks.py "127.0.0.1:$KAFKA_HOST_PORT" ct-b "$N" $COLL > "$after" || die "the host-side client could not send"
  wait_stored "$after" 180 || fail_logs "tasks sent after the kill missing in Weaviate 180 s later"
  local moved p
  moved=$(join <(sort "$after") <(stored | sort) | awk '{print $2, $3}' | sort -u)
  for p in $parts; do
    grep -q "^$p " <<<"$moved" || die "no task of partition $p was sent after the kill; send more (TASKS)"
    grep -q "^$p ${host[$victim]}\$" <<<"$moved" && die "partition $p still went to the killed worker"
  done
  step "after the kill: all $N new tasks stored; the killed worker's partitions $parts went to: $(grep -E "^($(echo $parts | tr ' ' '|')) " <<<"$moved" | cut -d' ' -f2 | sort -u | paste -sd' ')"
  podman image ls "$WORKER_IMAGE" --format "worker image: {{.Repository}}:{{.Tag}} {{.Size}}"
  if [[ ${KEEP:-0} == 1 ]]; then trap - EXIT; step "KEEP=1: the stack stays up; remove it with scripts/containers.sh down"; fi
  echo "containers: passed (3 workers, $((2 * N + 3)) tasks, a worker killed and replaced)"
}
main "$@"
exit 0
