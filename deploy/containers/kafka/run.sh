#!/bin/bash
# Entrypoint of the local Kafka image, like apache/kafka's: every KAFKA_FOO_BAR=v becomes foo.bar=v in
# server.properties (___ -> -, __ -> _), the storage is formatted once, then the broker starts.
set -euo pipefail
CONF=/opt/kafka/config/server.properties
: > "$CONF"
for var in $(compgen -e | grep '^KAFKA_' | grep -v -E '^KAFKA_(HEAP_OPTS|OPTS|JVM_PERFORMANCE_OPTS)$'); do
  key=${var#KAFKA_}; key=${key,,}; key=${key//___/-}; key=${key//__/@}; key=${key//_/.}; key=${key//@/_}
  echo "$key=${!var}" >> "$CONF"
done
grep -q '^log.dirs=' "$CONF" || echo "log.dirs=/var/lib/kafka/data" >> "$CONF"
printf '%s\n' status=error appender.out.type=Console appender.out.name=OUT appender.out.layout.type=PatternLayout \
  'appender.out.layout.pattern=[%d] %p %m (%c)%n' rootLogger.level=INFO rootLogger.appenderRef.out.ref=OUT \
  > /opt/kafka/config/log4j2.properties
CP='/opt/kafka/libs/*'
L4="-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties"
logdir=$(sed -n 's/^log.dirs=//p' "$CONF" | cut -d, -f1)
if [ ! -f "$logdir/meta.properties" ]; then
  java $L4 -cp "$CP" kafka.tools.StorageTool format --config "$CONF" \
    --cluster-id "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" --ignore-formatted
fi
exec java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m} -XX:+UseG1GC -Djava.awt.headless=true $L4 -cp "$CP" kafka.Kafka "$CONF"
