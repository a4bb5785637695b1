#!/bin/sh
# One-shot setup run by the compose file's `init` service before the broker starts:
# certificates (only when the set is missing), the password file from the
# credential env files, and copies of everything secret that the broker reads,
# owned by the broker's user (uid 1883 in eclipse-mosquitto) with keys at 0600.
set -eu

# The paths are those the compose file mounts; the tests point them at a temporary copy.
CERTS=${CERTS:-/certs}
SECRETS=${SECRETS:-/mosquitto/secrets}
CLIENT_CA=${CLIENT_CA:-/client-ca}
ENV_DIR=${ENV_DIR:-/env}
ACL=${ACL:-/acl}
BROKER_UID=${BROKER_UID:-1883}

# Keeps an existing set (made here earlier or by generate_certs.sh); `mosquitto`
# is the broker's host name inside the compose network. Extra names for clients
# outside it (CERTGEN_HOSTS, space separated) only apply to a new set.
hosts="--host mosquitto"
for h in ${CERTGEN_HOSTS:-}; do hosts="$hosts --host $h"; done
# shellcheck disable=SC2086
collector certgen --out "$CERTS" $hosts --if-missing

umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The value of KEY in an env file, as compose reads it (the last KEY=value line).
value() { sed -n "s/^$2=//p" "$1" | tail -n 1; }

first=-c
for f in "$ENV_DIR/collector.env" "$ENV_DIR/device-sim.env"; do
    user=$(value "$f" MQTT_USERNAME)
    pass=$(value "$f" MQTT_PASSWORD)
    if [ -z "$user" ] || [ -z "$pass" ]; then
        echo "init: $f must set MQTT_USERNAME and MQTT_PASSWORD" >&2
        exit 1
    fi
    mosquitto_passwd $first -b "$work/passwd" "$user" "$pass"
    first=
done
# The broker's own health check logs in with a password made here, never stored in the repository.
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/healthcheck.password"
mosquitto_passwd -b "$work/passwd" healthcheck "$(cat "$work/healthcheck.password")"

install -d -m 0700 -o "$BROKER_UID" -g "$BROKER_UID" "$SECRETS"
install -m 0644 -o "$BROKER_UID" -g "$BROKER_UID" "$CERTS/ca.crt" "$CERTS/server.crt" "$SECRETS/"
install -m 0600 -o "$BROKER_UID" -g "$BROKER_UID" "$CERTS/server.key" "$SECRETS/server.key"
install -m 0600 -o "$BROKER_UID" -g "$BROKER_UID" "$work/passwd" "$work/healthcheck.password" "$SECRETS/"
install -m 0600 -o "$BROKER_UID" -g "$BROKER_UID" "$ACL" "$SECRETS/acl"
# The clients inside compose get the CA certificate only (uid 10001 reads it at 0644).
install -m 0644 "$CERTS/ca.crt" "$CLIENT_CA/ca.crt"
echo "init: certificates in $CERTS, password file and ACL ready for the broker"
