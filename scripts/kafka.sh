#!/usr/bin/env bash
# Local Apache Kafka (KRaft, one combined broker+controller on 127.0.0.1) for
# development and tests. Jars come from Maven Central and are cached outside the
# clone so repeated runs (and CI on the same machine) reuse them.
#
#   scripts/kafka.sh start|stop|status|fetch|reset
#
# Environment: KAFKA_VERSION (4.1.1), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT
# (9093), VW_CACHE (~/.cache/vectorize-worker), VW_STATE (./.state).
#
# Secure mode (`KAFKA_SECURE=1 scripts/kafka.sh start`, or `start-secure`,
# `stop-secure`, `status-secure`, `reset-secure`) runs a SEPARATE broker with its
# own state in $VW_STATE/kafka-secure, for the transport-security tests:
#   127.0.0.1:9094  SASL_SSL, SCRAM-SHA-512 and SCRAM-SHA-256   (KAFKA_SECURE_PORT)
#   127.0.0.1:9096  SSL with client certificates required (mTLS) (KAFKA_SECURE_SSL_PORT)
#   127.0.0.1:9095  controller, 9097 inter-broker: PLAINTEXT, loopback only
#                   (KAFKA_SECURE_CONTROLLER_PORT, KAFKA_SECURE_INTERNAL_PORT)
# A test CA, the broker's certificate (127.0.0.1/localhost), a client certificate
# (its key encrypted) and the SCRAM user `vw` with a random password are made on
# the first start. $VW_STATE/kafka-secure/client.env lists the client settings
# (paths, no secret); the secrets are files next to it, readable by you only.
# The plain instance (9092/9093) is not touched.
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
KAFKA_HEAP="${KAFKA_HEAP:-768m}"

VERB="${1:-}"
SECURE="${KAFKA_SECURE:-0}"
case "$VERB" in *-secure) SECURE=1; VERB="${VERB%-secure}" ;; esac
if [[ "$SECURE" == 1 ]]; then
  # its own variables, so a KAFKA_PORT meant for the plain instance never moves this one
  KAFKA_PORT="${KAFKA_SECURE_PORT:-9094}"
  KAFKA_CONTROLLER_PORT="${KAFKA_SECURE_CONTROLLER_PORT:-9095}"
  KAFKA_SSL_PORT="${KAFKA_SECURE_SSL_PORT:-9096}"
  KAFKA_INTERNAL_PORT="${KAFKA_SECURE_INTERNAL_PORT:-9097}"
  KAFKA_HEAP="${KAFKA_SECURE_HEAP:-512m}"
  SCRAM_USER="${KAFKA_SECURE_USER:-vw}"
  RUN="$STATE/kafka-secure"
  TLS="$RUN/tls"
fi
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
  if [[ "$SECURE" == 1 ]]; then write_secure_config; fi
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

# --- secure mode ------------------------------------------------------------

# issue NAME SUBJECT EXTENSIONS: a key and a certificate signed by the test CA
issue() {
  openssl req -new -newkey rsa:2048 -nodes -keyout "$TLS/$1.key" -out "$TLS/$1.csr" -subj "$2" 2>>"$TLS/openssl.log"
  printf '%b\n' "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment" \
    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n$3" >"$TLS/$1.ext"
  openssl x509 -req -in "$TLS/$1.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -CAcreateserial -days 365 -sha256 \
    -extfile "$TLS/$1.ext" -out "$TLS/$1.pem" 2>>"$TLS/openssl.log"
}

make_certs() {
  command -v openssl >/dev/null || die "openssl is needed to make the test certificates: apt-get install -y openssl"
  # made once per state folder, again when a certificate would expire within a week
  if [[ -f "$TLS/ca.pem" && -f "$TLS/broker-keystore.pem" && -f "$TLS/client.key.enc" ]] \
    && openssl x509 -checkend 604800 -noout -in "$TLS/broker.pem" >/dev/null 2>&1 \
    && openssl x509 -checkend 604800 -noout -in "$TLS/client.pem" >/dev/null 2>&1; then
    return 0
  fi
  rm -rf "$TLS"; mkdir -p "$TLS"; chmod 700 "$TLS"
  (
    set -e; umask 077
    openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 365 -subj "/CN=vectorize-worker test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$TLS/ca.key" -out "$TLS/ca.pem" 2>>"$TLS/openssl.log"
    issue broker "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"
    issue client "/CN=vw-client" "extendedKeyUsage=clientAuth"
    # Kafka's PEM keystore: an unencrypted PKCS#8 key followed by the certificate chain
    openssl pkcs8 -topk8 -nocrypt -in "$TLS/broker.key" -out "$TLS/broker.p8" 2>>"$TLS/openssl.log"
    cat "$TLS/broker.p8" "$TLS/broker.pem" "$TLS/ca.pem" >"$TLS/broker-keystore.pem"
    # the client's key encrypted, so the key-password setting is exercised too
    openssl rand -hex 12 | tr -d '\n' >"$TLS/client-key-password"
    openssl pkey -in "$TLS/client.key" -aes256 -passout "file:$TLS/client-key-password" -out "$TLS/client.key.enc" \
      2>>"$TLS/openssl.log"
    rm -f "$TLS/client.key" "$TLS"/*.csr
  ) || die "making the test certificates failed; see $TLS/openssl.log"
  chmod 644 "$TLS/ca.pem" "$TLS/client.pem"
}

write_secure_config() {
  make_certs
  if [[ ! -f "$RUN/sasl-password" ]]; then (umask 077; openssl rand -hex 16 | tr -d '\n' >"$RUN/sasl-password"); fi
  local scram="org.apache.kafka.common.security.scram.ScramLoginModule required;"
  sed -i -e '/^listeners=/d' -e '/^advertised.listeners=/d' -e '/^inter.broker.listener.name=/d' \
    -e '/^listener.security.protocol.map=/d' "$RUN/server.properties"
  cat >>"$RUN/server.properties" <<PROPS
listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,INTERNAL://127.0.0.1:$KAFKA_INTERNAL_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,INTERNAL://127.0.0.1:$KAFKA_INTERNAL_PORT
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram
ssl.keystore.type=PEM
ssl.keystore.location=$TLS/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.pem
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.ssl.ssl.client.auth=required
PROPS
  # for Kafka's own CLI tools (holds the password: yours only)
  (umask 077; cat >"$RUN/client.properties" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$SCRAM_USER" password="$(cat "$RUN/sasl-password")";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.pem
PROPS
  )
  # for tests and people: where everything is, no secret in it
  cat >"$RUN/client.env" <<ENV
SASL_SSL_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
SSL_BOOTSTRAP=127.0.0.1:$KAFKA_SSL_PORT
SASL_USERNAME=$SCRAM_USER
SASL_PASSWORD_FILE=$RUN/sasl-password
CA_FILE=$TLS/ca.pem
CLIENT_CERT_FILE=$TLS/client.pem
CLIENT_KEY_FILE=$TLS/client.key.enc
CLIENT_KEY_PASSWORD_FILE=$TLS/client-key-password
ENV
}

# StorageTool arguments that create the SCRAM user with the storage (KRaft keeps credentials in its metadata log)
scram_args() {
  [[ "$SECURE" == 1 ]] || return 0
  local pw; pw="$(cat "$RUN/sasl-password")"
  printf '%s\n' --add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$pw]" \
    --add-scram "SCRAM-SHA-256=[name=$SCRAM_USER,password=$pw]"
}

start() {
  if running; then echo "kafka.sh: already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$KAFKA_PORT"; return 0; fi
  if answers; then die "port $KAFKA_PORT on 127.0.0.1 is taken by another process; stop it or set KAFKA_PORT"; fi
  fetch
  write_config
  if [[ ! -f "$RUN/data/meta.properties" ]]; then
    local scram=(); mapfile -t scram < <(scram_args)
    java -cp "$(classpath)" -Dlog4j2.configurationFile="$RUN/log4j2.properties" kafka.tools.StorageTool format \
      --config "$RUN/server.properties" --cluster-id "$(java -cp "$(classpath)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
      --standalone "${scram[@]}" >"$RUN/format.log" 2>&1 \
      || java -cp "$(classpath)" kafka.tools.StorageTool format --config "$RUN/server.properties" \
        --cluster-id "vectorizeworkerlocal1" "${scram[@]}" >>"$RUN/format.log" 2>&1 \
      || die "formatting KRaft storage failed; see $RUN/format.log"
  fi
  echo "kafka.sh: starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT$([[ "$SECURE" == 1 ]] && echo " (SASL_SSL), 127.0.0.1:$KAFKA_SSL_PORT (SSL, mTLS)") (log: $LOG)"
  nohup java -Xms256m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
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

case "$VERB" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  fetch) fetch ;;
  reset) stop; rm -rf "$RUN" ;;
  *) echo "usage: $0 start|stop|status|fetch|reset (KAFKA_SECURE=1, or start-secure|stop-secure|status-secure|reset-secure)" >&2; exit 2 ;;
esac
