#!/bin/sh
# Installs what `cargo run --release -p bench` needs besides the workspace:
# Mosquitto and its clients, ss (iproute2), and paho-mqtt for the Python peer.
set -eu
missing=""
command -v mosquitto >/dev/null 2>&1 || missing="$missing mosquitto"
command -v mosquitto_sub >/dev/null 2>&1 || missing="$missing mosquitto-clients"
command -v ss >/dev/null 2>&1 || missing="$missing iproute2"
command -v python3 >/dev/null 2>&1 || missing="$missing python3 python3-pip"
if [ -n "$missing" ]; then
    apt-get update
    apt-get install -y $missing
fi
python3 -c 'import paho.mqtt.client' 2>/dev/null || python3 -m pip install 'paho-mqtt>=2,<3'
echo "bench: ready (mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}'), paho-mqtt $(python3 -c 'import paho.mqtt; print(paho.mqtt.__version__)'))"
