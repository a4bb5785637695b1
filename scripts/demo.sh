#!/usr/bin/env bash
# The quick start: a local Mosquitto with TLS and passwords, the collector and a
# 10-vehicle simulator, all under ./demo. Ctrl-C stops the simulator, then the
# collector, prints `collector stats` and stops the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${DEMO_PORT:-8883}"
COUNT="${DEMO_DEVICES:-10}"
BIN=target/release
D="$PWD/demo"
[ -x "$BIN/collector" ] && [ -x "$BIN/device-sim" ] || cargo build --release
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || {
  echo "mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients" >&2; exit 2; }
PATH="$PATH:/usr/sbin"
mkdir -p "$D"

"$BIN/collector" certgen --out "$D/certs" --if-missing

if [ ! -f "$D/credentials.env" ]; then
  umask 077
  cat > "$D/credentials.env" <<EOC
COLLECTOR_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
DEVICE_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
EOC
  umask 022
fi
# shellcheck disable=SC1091
. "$D/credentials.env"
rm -f "$D/passwd"
mosquitto_passwd -c -b "$D/passwd" collector "$COLLECTOR_PASSWORD"
mosquitto_passwd -b "$D/passwd" device "$DEVICE_PASSWORD"
chmod 600 "$D/passwd"
cat > "$D/acl" <<'EOA'
# Each device may publish only to its own topics (%c is the MQTT client id = device id).
pattern write device/data/%c
pattern write vehicle/speed/%c
user collector
topic read device/data/+
topic read vehicle/speed/+
EOA
cat > "$D/mosquitto.conf" <<EOC
user $(id -un)
persistence true
persistence_location $D/
log_dest file $D/mosquitto.log
allow_anonymous false
password_file $D/passwd
acl_file $D/acl
max_inflight_messages 100
listener $PORT 127.0.0.1
cafile $D/certs/ca.crt
certfile $D/certs/server.crt
keyfile $D/certs/server.key
EOC

# setsid: Ctrl-C stops only the simulator; the script then stops the collector and the
# broker in order, so the collector's last acknowledgements still reach the broker.
setsid mosquitto -c "$D/mosquitto.conf" & BROKER=$!
trap 'kill $BROKER 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done

export MQTT_BROKER_HOST=localhost MQTT_BROKER_PORT="$PORT" MQTT_USE_TLS=true MQTT_CA_CERTS="$D/certs/ca.crt"
MQTT_USERNAME=collector MQTT_PASSWORD="$COLLECTOR_PASSWORD" setsid "$BIN/collector" --db "$D/collector.db" & COLLECTOR=$!
trap 'kill $COLLECTOR $BROKER 2>/dev/null || true' EXIT

echo "broker on localhost:$PORT (TLS), collector storing into $D/collector.db; Ctrl-C to stop"
MQTT_USERNAME=device MQTT_PASSWORD="$DEVICE_PASSWORD" "$BIN/device-sim" --count "$COUNT" --queue "$D/device-sim-queue.db" || true
kill -TERM "$COLLECTOR" 2>/dev/null || true
wait "$COLLECTOR" 2>/dev/null || true
"$BIN/collector" stats --db "$D/collector.db"
