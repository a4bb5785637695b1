#!/bin/sh
# Development certificates for the broker in docker/mosquitto/config/certs: a thin
# wrapper around `collector certgen` (run it with --help for every option).
# Examples:
#   docker/mosquitto/generate_certs.sh                          # CA + server cert
#   docker/mosquitto/generate_certs.sh --host mqtt.example.com  # an extra server name
#   docker/mosquitto/generate_certs.sh --client vehicle_01      # a client cert for mutual TLS
#   docker/mosquitto/generate_certs.sh --force                  # replace the whole set
# Uses $COLLECTOR if set, else `collector` on PATH, else builds it with cargo.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/config/certs"
if [ -n "${COLLECTOR:-}" ]; then
    set -- "$COLLECTOR" certgen "$@"
elif command -v collector >/dev/null 2>&1; then
    set -- collector certgen "$@"
else
    set -- cargo run --quiet --release --manifest-path "$here/../../Cargo.toml" -p collector -- certgen "$@"
fi
# `mosquitto` is the broker's name inside docker compose.
exec "$@" --out "$out" --host mosquitto
