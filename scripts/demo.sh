#!/usr/bin/env bash
# The quick start: a local Mosquitto with TLS and passwords, the collector and a
# 10-vehicle simulator, all under ./demo. Ctrl-C stops the simulator, then the
# collector, prints `collector stats` and stops the broker.
#
# Knobs (environment, all optional):
#   DEMO_PORT      TLS port of the demo broker on 127.0.0.1 (default 8883); it must be free
#   DEMO_DEVICES   simulated vehicles (default 10)
#   DEMO_DIR       where everything is written (default ./demo, relative to where you run it)
#   DEMO_BIN       directory holding `collector` and `device-sim` (default target/release
#                  of this repository, built with cargo when missing)
#   DEMO_MESSAGES  when set, each vehicle sends this many messages, then the script stops
#                  everything by itself and prints the stats (for tests and scripts)
#   DEMO_READY_TIMEOUT  seconds to wait for the broker and for the collector's
#                  subscriptions (default 30)
#   DEMO_METRICS_PORT  port on 127.0.0.1 of the collector's /metrics, /healthz and /readyz
#                  (default 9464; when it is taken the demo runs without them; 0 = off)
set -euo pipefail

die() { echo "demo.sh: $*" >&2; exit 1; }
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

PORT="${DEMO_PORT:-8883}"
COUNT="${DEMO_DEVICES:-10}"
MESSAGES="${DEMO_MESSAGES:-}"
TIMEOUT="${DEMO_READY_TIMEOUT:-30}"
METRICS_PORT="${DEMO_METRICS_PORT:-9464}"
D="$(abs "${DEMO_DIR:-demo}")"
BIN="${DEMO_BIN:+$(abs "$DEMO_BIN")}"
cd "$(dirname "$0")/.."
[ -n "${DEMO_DIR:-}" ] || D="$PWD/demo"
for v in PORT COUNT TIMEOUT METRICS_PORT; do
  case "${!v}" in ''|*[!0-9]*) die "DEMO_$v must be a number, not '${!v}'";; esac
done
case "$MESSAGES" in *[!0-9]*) die "DEMO_MESSAGES must be a number, not '$MESSAGES'";; esac

if [ -z "$BIN" ]; then
  BIN="$PWD/target/release"
  [ -x "$BIN/collector" ] && [ -x "$BIN/device-sim" ] || cargo build --release -p collector -p device-sim
fi
[ -x "$BIN/collector" ] && [ -x "$BIN/device-sim" ] || die "no collector and device-sim in $BIN (DEMO_BIN)"
PATH="$PATH:/usr/sbin:/sbin"
command -v mosquitto >/dev/null 2>&1 && command -v mosquitto_passwd >/dev/null 2>&1 || {
  echo "demo.sh: mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients" >&2; exit 2; }

# True when something accepts TCP connections on 127.0.0.1:PORT (or the port given).
listening() { (exec 3<>"/dev/tcp/127.0.0.1/${1:-$PORT}") 2>/dev/null; }

# Another broker (or anything else) on the port would take our clients: refuse to start.
if listening; then
  die "port $PORT on 127.0.0.1 is already in use (another Mosquitto?); stop it or pick a free port with DEMO_PORT=..."
fi

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
# `user` = whoever runs this: Mosquitto started as root would otherwise switch to
# the user `mosquitto`, which cannot read the 0600 key and passwd written here.
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

BROKER="" COLLECTOR=""
# On every exit: stop what is still running and wait for it, so the port is free again.
cleanup() {
  if [ -n "$COLLECTOR" ]; then kill "$COLLECTOR" 2>/dev/null || true; wait "$COLLECTOR" 2>/dev/null || true; fi
  if [ -n "$BROKER" ]; then kill "$BROKER" 2>/dev/null || true; wait "$BROKER" 2>/dev/null || true; fi
}
trap cleanup EXIT
log_tail() { echo "--- last lines of $1:" >&2; tail -n 20 "$1" >&2 2>/dev/null || true; }

# setsid: Ctrl-C stops only the simulator; the script then stops the collector and the
# broker in order, so the collector's last acknowledgements still reach the broker.
: > "$D/mosquitto.log"
setsid mosquitto -c "$D/mosquitto.conf" & BROKER=$!
deadline=$((SECONDS + TIMEOUT))
until listening; do
  kill -0 "$BROKER" 2>/dev/null || { log_tail "$D/mosquitto.log"; die "mosquitto exited at start (log: $D/mosquitto.log)"; }
  [ "$SECONDS" -lt "$deadline" ] || { log_tail "$D/mosquitto.log"; die "mosquitto is not listening on 127.0.0.1:$PORT after ${TIMEOUT}s"; }
  sleep 0.1
done
# The port answers; it must be our broker that answers (it exits when it cannot bind).
sleep 0.3
kill -0 "$BROKER" 2>/dev/null || { log_tail "$D/mosquitto.log"; die "mosquitto exited right after start: is port $PORT taken? (log: $D/mosquitto.log)"; }

export MQTT_BROKER_HOST=localhost MQTT_BROKER_PORT="$PORT" MQTT_USE_TLS=true MQTT_CA_CERTS="$D/certs/ca.crt"
READY="$D/collector.ready"
rm -f "$READY"
metrics_args=()
if [ "$METRICS_PORT" -eq 0 ]; then
  :
elif listening "$METRICS_PORT"; then
  echo "demo.sh: port $METRICS_PORT on 127.0.0.1 is in use: running without the metrics endpoint (DEMO_METRICS_PORT=... picks another)" >&2
  METRICS_PORT=0
else
  metrics_args=(--metrics-addr "127.0.0.1:$METRICS_PORT")
fi
MQTT_USERNAME=collector MQTT_PASSWORD="$COLLECTOR_PASSWORD" \
  setsid "$BIN/collector" --db "$D/collector.db" --ready-file "$READY" ${metrics_args[@]+"${metrics_args[@]}"} >"$D/collector.log" 2>&1 & COLLECTOR=$!
# Devices start only once the broker has confirmed the collector's subscriptions:
# before that, the broker would drop their first readings (nobody subscribed yet).
deadline=$((SECONDS + TIMEOUT))
until [ -f "$READY" ]; do
  kill -0 "$COLLECTOR" 2>/dev/null || { log_tail "$D/collector.log"; die "the collector exited before it was ready (log: $D/collector.log)"; }
  [ "$SECONDS" -lt "$deadline" ] || { log_tail "$D/collector.log"; die "the collector was not subscribed after ${TIMEOUT}s (log: $D/collector.log)"; }
  sleep 0.1
done

total() { "$BIN/collector" stats --db "$D/collector.db" --json 2>/dev/null | sed -n 's/^  "total": \([0-9]*\),$/\1/p'; }
before=$(total); before=${before:-0}

echo "broker on localhost:$PORT (TLS, log $D/mosquitto.log); collector storing into $D/collector.db (log $D/collector.log)"
if [ "$METRICS_PORT" -ne 0 ]; then
  echo "collector metrics: http://127.0.0.1:$METRICS_PORT/metrics (health: /healthz, ready: /readyz; \`$BIN/collector probe URL\` fetches one)"
fi
sim_args=(--count "$COUNT" --queue "$D/device-sim-queue.db")
if [ -n "$MESSAGES" ]; then
  sim_args+=(--messages "$MESSAGES")
else
  echo "Ctrl-C to stop"
fi
MQTT_USERNAME=device MQTT_PASSWORD="$DEVICE_PASSWORD" "$BIN/device-sim" "${sim_args[@]}" || true

if [ -n "$MESSAGES" ]; then
  # Every reading was acknowledged by the broker; give the collector time to store them.
  want=$((before + COUNT * MESSAGES))
  deadline=$((SECONDS + TIMEOUT))
  until [ "$(total)" -ge "$want" ] 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.2; done
  [ "$(total)" -ge "$want" ] 2>/dev/null || echo "demo.sh: the collector stored $(total) of $want messages within ${TIMEOUT}s" >&2
fi
kill -TERM "$COLLECTOR" 2>/dev/null || true
wait "$COLLECTOR" 2>/dev/null || true
COLLECTOR=""
"$BIN/collector" stats --db "$D/collector.db"
