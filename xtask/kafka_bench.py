"""Kafka-protocol benchmark with librdkafka (confluent-kafka-python): the same client against
any Kafka-compatible broker, so rill's Kafka listener can be compared with other brokers.

Run through `cargo xtask kafka-bench` (which provides the venv); prints one JSON object and a
human summary. Three phases on a fresh topic:

1. produce, unthrottled: N records as fast as the client sends them (throughput; latency
   includes time queued in the client, as kafka-producer-perf-test reports it);
2. produce at a fixed rate (open loop: each record is due at start + i / rate and its latency
   is measured from that due time, so a stalled broker cannot hide behind a slow sender);
3. consume everything from the start in a consumer group (throughput), checking that every
   record produced is read back once.
"""

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def percentiles(samples_ms):
    if not samples_ms:
        return {}
    s = sorted(samples_ms)

    def q(p):
        return s[min(len(s) - 1, int(p * len(s)))]

    return {"p50": q(0.50), "p99": q(0.99), "p999": q(0.999), "max": s[-1]}


def produce(args, topic, count, rate=None):
    conf = {
        "bootstrap.servers": args.bootstrap,
        "acks": args.acks,
        "linger.ms": args.linger_ms,
        "batch.size": args.batch_size,
        "compression.type": args.compression,
        "enable.idempotence": args.acks == "all",
        "queue.buffering.max.kbytes": 65536,
    }
    producer = Producer(conf)
    value = b"x" * args.record_size
    # Warm-up: connections, metadata and the producer id are in place before the clock starts.
    producer.produce(topic, value=value)
    if producer.flush(30) != 0:
        raise SystemExit("the warm-up record was not acknowledged within 30 s")
    latencies = []
    failures = []
    # When record i was due (throttled) or handed to the client (unthrottled); its key is i.
    due = [0.0] * count

    def delivered(err, msg):
        if err is not None:
            failures.append(str(err))
        else:
            latencies.append((time.perf_counter() - due[int(msg.key())]) * 1000.0)

    start = time.perf_counter()
    for i in range(count):
        if rate:
            due[i] = start + i / rate
            wait = due[i] - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        else:
            due[i] = time.perf_counter()
        while True:
            try:
                producer.produce(topic, value=value, key=str(i).encode(), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.005)
        producer.poll(0)
    producer.flush(120)
    elapsed = time.perf_counter() - start
    return {
        "records": count,
        "acknowledged": len(latencies),
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
        "seconds": elapsed,
        "records_per_s": len(latencies) / elapsed,
        "mb_per_s": len(latencies) * args.record_size / elapsed / 1e6,
        "latency_ms": percentiles(latencies),
    }


def consume(args, topic, expected):
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"bench-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52428800,
        }
    )
    consumer.subscribe([topic])
    seen = set()
    total = 0
    start = None
    deadline = time.monotonic() + 120
    while total < expected and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=10000, timeout=1.0)
        for m in batch:
            if m.error():
                raise KafkaException(m.error())
            if start is None:
                start = time.perf_counter()
            seen.add((m.partition(), m.offset()))
            total += 1
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return {
        "records": total,
        "distinct": len(seen),
        "seconds": elapsed,
        "records_per_s": total / elapsed if elapsed else 0.0,
        "mb_per_s": total * args.record_size / elapsed / 1e6 if elapsed else 0.0,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--name", default="broker", help="label for the report")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--record-size", type=int, default=1024)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--acks", default="all", choices=["0", "1", "all"])
    p.add_argument("--linger-ms", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16384)
    p.add_argument("--compression", default="none")
    p.add_argument("--rate", type=int, default=10_000, help="records/s of the throttled run")
    p.add_argument("--rate-seconds", type=int, default=10)
    args = p.parse_args()

    topic = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    for f in admin.create_topics([NewTopic(topic, args.partitions, 1)]).values():
        f.result(30)
    time.sleep(1.0)

    report = {"name": args.name, "topic": topic, "args": vars(args)}
    report["produce"] = produce(args, topic, args.records)
    throttled = args.rate * args.rate_seconds
    report["produce_throttled"] = produce(args, topic, throttled, rate=args.rate)
    # Every record acknowledged, and the two warm-up records.
    expected = report["produce"]["acknowledged"] + report["produce_throttled"]["acknowledged"] + 2
    report["consume"] = consume(args, topic, expected)
    print(json.dumps(report))

    pr, th, co = report["produce"], report["produce_throttled"], report["consume"]
    print(
        f"{args.name}: produce {pr['records_per_s']:,.0f} records/s ({pr['mb_per_s']:.1f} MB/s), "
        f"latency p50 {pr['latency_ms'].get('p50', 0):.1f} p99 {pr['latency_ms'].get('p99', 0):.1f} ms; "
        f"at {args.rate:,} records/s p50 {th['latency_ms'].get('p50', 0):.2f} "
        f"p99 {th['latency_ms'].get('p99', 0):.2f} p999 {th['latency_ms'].get('p999', 0):.2f} ms; "
        f"consume {co['records_per_s']:,.0f} records/s ({co['mb_per_s']:.1f} MB/s); "
        f"failed {pr['failed'] + th['failed']}, read {co['records']} of {expected} "
        f"({co['distinct']} distinct)",
        file=sys.stderr,
    )
    if pr["failed"] or th["failed"] or co["distinct"] != expected or co["records"] != expected:
        # A record acknowledged but not read back (or read twice) fails the run.
        sys.exit(1)


if __name__ == "__main__":
    main()
