#!/usr/bin/env python3
"""Stand-in for the replaced Python collector, as the benchmark's peer.

Like the system being replaced it subscribes with paho-mqtt at QoS 1 on a
persistent session, acknowledges every message on arrival (paho sends the PUBACK
when on_message returns), keeps a write batch in memory and inserts it into
SQLite 250 rows at a time. It exits once --count messages are committed, so the
benchmark can time a drain by the process's exit.

Setup: pip install paho-mqtt   (2.x)
"""

import argparse
import json
import sqlite3
import ssl
import sys
import time

import paho.mqtt.client as mqtt

BATCH = 250


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--cafile", help="CA certificate: connect with TLS")
    ap.add_argument("--client-id", default="paho-collector")
    ap.add_argument("--topic", action="append", default=[])
    ap.add_argument("--count", type=int, required=True, help="exit after this many messages are stored")
    ap.add_argument("--db", required=True)
    args = ap.parse_args()
    topics = args.topic or ["device/data/+", "vehicle/speed/+"]

    db = sqlite3.connect(args.db)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS telemetry (device_id TEXT NOT NULL, seq INTEGER, topic TEXT NOT NULL,"
        " publish_ts REAL, receive_ts REAL NOT NULL, payload TEXT NOT NULL)"
    )
    db.commit()

    batch = []
    state = {"stored": 0, "bad": 0}

    def flush():
        if batch:
            db.executemany("INSERT INTO telemetry VALUES (?, ?, ?, ?, ?, ?)", batch)
            db.commit()
            state["stored"] += len(batch)
            batch.clear()

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe([(t, 1) for t in topics])

    def on_message(client, userdata, msg):
        now = time.time()
        try:
            text = msg.payload.decode("utf-8")
            data = json.loads(text)
            device_id = data.get("device_id") or msg.topic.rsplit("/", 1)[-1]
            ts = data.get("timestamp")
            if ts is not None and ts > 1e12:
                ts = ts / 1000.0
            batch.append((device_id, data.get("seq"), msg.topic, ts, now, text))
        except (UnicodeDecodeError, ValueError, AttributeError):
            state["bad"] += 1
        if len(batch) >= BATCH or state["stored"] + len(batch) + state["bad"] >= args.count:
            flush()
        if state["stored"] + state["bad"] >= args.count:
            client.disconnect()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    if args.cafile:
        client.tls_set(ca_certs=args.cafile, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(args.host, args.port, keepalive=60)
    client.loop_forever()
    flush()
    print(f"stored {state['stored']} rejected {state['bad']}", file=sys.stderr)
    return 0 if state["stored"] + state["bad"] >= args.count else 1


if __name__ == "__main__":
    sys.exit(main())
