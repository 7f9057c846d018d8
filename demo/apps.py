"""Two small applications with no tracing code at all: `orders` produces, `billing` consumes.

They are ordinary kafka-python programs pointed at their sidecar proxy; every trace in Jaeger comes
from the proxies alone.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer

TOPIC = "orders"
_running = True


def _stop(*_: object) -> None:
    global _running
    _running = False


def orders(bootstrap: str, rate: float) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    number = 0
    while _running:
        number += 1
        order = {"order": number, "item": ["tea", "coffee", "cake"][number % 3], "qty": number % 5}
        producer.send(TOPIC, key=f"order-{number}".encode(), value=json.dumps(order).encode())
        print(f"sent order-{number}", flush=True)
        time.sleep(1 / rate)
    producer.close()


def billing(bootstrap: str) -> None:
    consumer = KafkaConsumer(
        TOPIC, bootstrap_servers=bootstrap, group_id="billing", auto_offset_reset="earliest"
    )
    while _running:
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                print(f"billed {record.key.decode()}", flush=True)
    consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("app", choices=["orders", "billing"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--rate", type=float, default=5.0, help="orders per second")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.app == "orders":
        orders(args.bootstrap, args.rate)
    else:
        billing(args.bootstrap)


if __name__ == "__main__":
    sys.exit(main())
