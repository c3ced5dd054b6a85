#!/usr/bin/env bash
# Local Apache Kafka (KRaft, one combined broker+controller on 127.0.0.1) for
# development and tests. Jars come from Maven Central and are cached outside the
# clone so repeated runs (and CI on the same machine) reuse them.
#
#   scripts/kafka.sh start|stop|status|fetch
#
# Environment: KAFKA_VERSION (4.1.1), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT
# (9093), VW_CACHE (~/.cache/vectorize-worker), VW_STATE (./.state).
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
LOG4J_VERSION="${LOG4J_VERSION:-2.24.3}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${VW_CACHE:-$HOME/.cache/vectorize-worker}"
STATE="${VW_STATE:-$ROOT/.state}"
LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
RUN="$STATE/kafka"
PIDFILE="$RUN/kafka.pid"
LOG="$RUN/kafka.log"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  [[ -f "$LIBS/.complete" ]] && return 0
  command -v mvn >/dev/null || die "Maven (mvn) is needed to collect Kafka's jars: apt-get install -y maven"
  command -v java >/dev/null || die "Java 17+ is needed to run Kafka: apt-get install -y openjdk-17-jre-headless"
  local work="$CACHE/kafka-$KAFKA_VERSION/pom"
  mkdir -p "$work" "$LIBS"
  cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.vectorize</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-1.2-api</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  echo "kafka.sh: collecting Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  (cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS") \
    || die "could not collect Kafka jars with Maven; check access to Maven Central"
  touch "$LIBS/.complete"
}

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

answers() {
  (exec 3<>/dev/tcp/127.0.0.1/"$KAFKA_PORT") 2>/dev/null
}

write_config() {
  mkdir -p "$RUN/data"
  cat >"$RUN/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$RUN/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
message.max.bytes=16777216
PROPS
  cat >"$RUN/log4j2.properties" <<L4J
status=error
appender.file.type=File
appender.file.name=FILE
appender.file.fileName=$RUN/server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=WARN
rootLogger.appenderRef.file.ref=FILE
logger.kafka.name=kafka
logger.kafka.level=INFO
L4J
}

classpath() { echo "$LIBS/*"; }

start() {
  if running; then echo "kafka.sh: already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$KAFKA_PORT"; return 0; fi
  if answers; then die "port $KAFKA_PORT on 127.0.0.1 is taken by another process; stop it or set KAFKA_PORT"; fi
  fetch
  write_config
  if [[ ! -f "$RUN/data/meta.properties" ]]; then
    java -cp "$(classpath)" -Dlog4j2.configurationFile="$RUN/log4j2.properties" kafka.tools.StorageTool format \
      --config "$RUN/server.properties" --cluster-id "$(java -cp "$(classpath)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
      --standalone >"$RUN/format.log" 2>&1 \
      || java -cp "$(classpath)" kafka.tools.StorageTool format --config "$RUN/server.properties" \
        --cluster-id "vectorizeworkerlocal1" >>"$RUN/format.log" 2>&1 \
      || die "formatting KRaft storage failed; see $RUN/format.log"
  fi
  echo "kafka.sh: starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (log: $LOG)"
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
    -cp "$(classpath)" kafka.Kafka "$RUN/server.properties" >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 120); do
    if ! running; then tail -n 40 "$LOG" "$RUN/server.log" 2>/dev/null >&2; die "Kafka exited during start-up; see $LOG"; fi
    if answers && grep -qE "Kafka Server started|Kafka startTimeMs" "$RUN/server.log" "$LOG" 2>/dev/null; then
      echo "kafka.sh: Kafka is up (pid $(cat "$PIDFILE"))"; return 0
    fi
    sleep 1
  done
  die "Kafka did not answer on 127.0.0.1:$KAFKA_PORT within 120 s; see $LOG and $RUN/server.log"
}

stop() {
  if ! running; then echo "kafka.sh: not running"; rm -f "$PIDFILE"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "kafka.sh: stopped"; return 0; }; sleep 1; done
  echo "kafka.sh: Kafka did not stop within 60 s; killing pid $pid" >&2
  kill -KILL "$pid" 2>/dev/null || true; rm -f "$PIDFILE"
}

status() {
  if running; then echo "kafka.sh: running (pid $(cat "$PIDFILE")) on 127.0.0.1:$KAFKA_PORT"; else echo "kafka.sh: not running"; return 3; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  fetch) fetch ;;
  reset) stop; rm -rf "$RUN" ;;
  *) echo "usage: $0 start|stop|status|fetch|reset" >&2; exit 2 ;;
esac
