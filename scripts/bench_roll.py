"""Restarts of a three-worker fleet on an independent Kafka broker.

Usage: bench_roll.py SLUICE TANSU WORKDIR RUNS RATE

For each run, each way of restarting and each group setting, on a fresh
tansu broker (in-memory, 127.0.0.1) and a fresh local lake: a topic of 6
partitions, three `sluice serve` workers, a producer (confluent-kafka,
librdkafka) at RATE events/s. After a 15 s warm-up every worker is
restarted in turn and the next one only once the restarted one holds
partitions again:

  roll  SIGTERM (the worker drains and commits), wait for the exit, start
        it again under the same worker id (a rolling deploy);
  kill  SIGKILL, start it again under the same worker id (a crash loop).

15 s after the last restart the producer stops and the fleet drains. Then,
from the table's own log (commit timestamps and sluice's lineage per
partition):

- the longest gap between two commits of one partition that overlaps the
  roll (max over partitions, and the median of the partitions' longest);
- events committed per second while the roll lasted;
- that every produced event was committed (the lineage's counts).

Settings:
  eager   what sluice used before: librdkafka's defaults (range/roundrobin
          eager assignment, session 45 s), no static membership;
  static  sluice's defaults: cooperative-sticky, static membership from the
          worker id, session 30 s.
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

SETTINGS = {
    "eager": '{ "partition.assignment.strategy" = "range,roundrobin", "session.timeout.ms" = "45000", '
    '"max.poll.interval.ms" = "300000", "group.instance.id" = "" }',
    "static": "{}",
}
PARTITIONS = 6
WARMUP = 15
AFTER = 15


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(address, path):
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=2) as answer:
            return answer.status
    except Exception:
        return None


class Worker:
    def __init__(self, sluice, config, worker_id):
        self.worker_id = worker_id
        logs = os.environ.get("SLUICE_ROLL_LOGS")
        stderr = open(Path(logs) / f"{worker_id}.log", "a") if logs else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sluice, "-q", "serve", "--config", str(config), "--listen", "127.0.0.1:0", "--worker-id", worker_id],
            stdout=subprocess.PIPE, stderr=stderr, text=True)
        first = self.proc.stdout.readline()
        self.address = first.strip().rsplit("http://", 1)[-1]

    def wait_ready(self, limit=60):
        deadline = time.time() + limit
        while get(self.address, "/readyz") != 200:
            if time.time() > deadline:
                raise RuntimeError(f"{self.worker_id} never ready")
            time.sleep(0.1)

    def terminate(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def held_partitions(self):
        try:
            with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except Exception:
            return 0
        return sum(1 for line in text.splitlines() if line.startswith("sluice_partition_committed_position{"))

    def wait_for_partitions(self, limit=180):
        deadline = time.time() + limit
        while self.held_partitions() == 0:
            if time.time() > deadline:
                raise RuntimeError(f"{self.worker_id} got no partitions in {limit} s")
            time.sleep(0.1)


def produce(bootstrap, rate, stop, sent):
    """Sends `rate` events/s until `stop`; `sent` = [sent, delivered, failed]."""
    # One record per batch: tansu 0.6.0 answers a fetch that starts inside a
    # record batch with the next batch, skipping the rest of that one
    # (tests/it/tansu.rs shows it), which would lose records whenever a
    # worker resumes mid-batch.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1})

    def delivered(error, _message):
        sent[2 if error else 1] += 1

    started = time.time()
    while not stop.is_set():
        due = int((time.time() - started) * rate)
        while sent[0] < due:
            n = sent[0]
            payload = json.dumps({"event_id": f"e-{n}", "user_id": f"u-{n % 50}", "amount": n + 0.5,
                                  "event_time": "2024-05-01T12:00:00Z"})
            while True:
                try:
                    producer.produce("roll", key=f"u-{n % 50}", value=payload, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
            sent[0] += 1
        producer.poll(0)
        time.sleep(0.01)
    producer.flush(60)


def report_stall(sluice, bootstrap, table):
    """Per partition: the broker's end offset and the table's position."""
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "roll-inspect"})
    status = json.loads(subprocess.run([sluice, "-q", "status", "--json", str(table)], capture_output=True,
                                       text=True, check=True).stdout)
    positions = {p["app_id"].rsplit("/", 1)[-1]: p for p in status["partitions"]}
    for partition in range(PARTITIONS):
        low, high = consumer.get_watermark_offsets(TopicPartition("roll", partition), timeout=10)
        p = positions.get(str(partition), {})
        print(f"  partition {partition}: broker offsets {low}..{high}, table position {p.get('position')}, "
              f"received {p.get('received')}, committed {p.get('committed')}, contiguous {p.get('contiguous')}",
              file=sys.stderr)
    # What the broker serves, read by an independent consumer from offset 0.
    consumer.assign([TopicPartition("roll", p, 0) for p in range(PARTITIONS)])
    served, idle_since = {}, time.time()
    while time.time() - idle_since < 5:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        idle_since = time.time()
        served.setdefault(message.partition(), []).append((message.offset(), json.loads(message.value())["event_id"]))
    consumer.close()
    for partition, rows in sorted(served.items()):
        offsets = [o for o, _ in rows]
        ids = {i for _, i in rows}
        print(f"  partition {partition}: the broker serves {len(rows)} records ({len(ids)} distinct ids), offsets "
              f"{min(offsets)}..{max(offsets)}, {len(offsets) - len(set(offsets))} repeated offsets", file=sys.stderr)
    print(f"  the broker serves {sum(len(r) for r in served.values())} records in all, "
          f"{len({i for r in served.values() for _, i in r})} distinct", file=sys.stderr)


def commits(table):
    """(timestamp ms, {app_id: committed}) of every data commit."""
    out = []
    for path in sorted((table / "_delta_log").glob("*.json")):
        for line in path.read_text().splitlines():
            action = json.loads(line)
            info = action.get("commitInfo")
            if not info or "sluice" not in info:
                continue
            lineage = info["sluice"]
            if lineage.get("kind") != "data":
                continue
            out.append((info["timestamp"], {p["app_id"]: p["committed"] for p in lineage["partitions"]}))
    return out


def one_run(sluice, tansu, work, setting, rate, how):
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = subprocess.Popen([tansu, "broker", "--listener-url", f"tcp://{bootstrap}", "--advertised-listener-url",
                               f"tcp://{bootstrap}", "--storage-engine", "memory://tansu/", "--silent"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic("roll", PARTITIONS, 1)]).values():
            future.result()
        lake = work / f"lake-{setting}-{time.time_ns()}"
        config = work / f"roll-{setting}.toml"
        config.write_text(f"""
[lake]
root = "{lake}"
[batching]
max_latency = "2s"
shutdown_grace = "20s"
[service]
drain_delay = "1s"
[maintenance]
enabled = false
[erasure]
enabled = false
[[sources]]
kind = "kafka"
name = "k"
brokers = "{bootstrap}"
topics = ["roll"]
group_id = "g-roll"
properties = {SETTINGS[setting]}
[[tables]]
name = "events"
source = "k"
key = "user_id"
columns = [
  {{ name = "event_id", type = "string", nullable = false }},
  {{ name = "user_id", type = "string", nullable = false }},
  {{ name = "amount", type = "double" }},
  {{ name = "event_time", type = "timestamp" }},
]
""")
        workers = [Worker(sluice, config, f"roll-{i}") for i in range(3)]
        for w in workers:
            w.wait_ready()
        stop, sent = threading.Event(), [0, 0, 0]
        producer = threading.Thread(target=produce, args=(bootstrap, rate, stop, sent))
        producer.start()
        time.sleep(WARMUP)
        roll_start = time.time()
        rejoins = []
        for i, w in enumerate(workers):
            if how == "roll":
                w.terminate()
            else:
                w.kill()
            restarted = time.time()
            workers[i] = Worker(sluice, config, w.worker_id)
            workers[i].wait_ready()
            workers[i].wait_for_partitions()
            rejoins.append(time.time() - restarted)
        roll_end = time.time()
        time.sleep(AFTER)
        stop.set()
        producer.join()
        table = lake / "events"
        deadline = time.time() + float(os.environ.get("SLUICE_ROLL_DRAIN", "240"))
        while True:
            committed = sum(sum(c.values()) for _, c in commits(table))
            if committed >= sent[1] or time.time() > deadline:
                break
            time.sleep(1)
        if committed < sent[1]:
            report_stall(sluice, bootstrap, table)
        for w in workers:
            w.terminate()
        workers = []
    finally:
        for w in workers:
            w.proc.kill()
        broker.kill()
        broker.wait()

    history = commits(table)
    if os.environ.get("SLUICE_ROLL_TIMELINE"):
        for t, c in history:
            print(f"  {t / 1000 - roll_start:+8.2f}s {sorted(a.rsplit('/', 1)[-1] for a in c)}", file=sys.stderr)
        print(f"  roll ended at +{roll_end - roll_start:.2f}s", file=sys.stderr)
    committed = sum(sum(c.values()) for _, c in history)
    start_ms, end_ms = roll_start * 1000, roll_end * 1000
    longest = {}
    for app_id in {a for _, c in history for a in c}:
        times = [t for t, c in history if app_id in c]
        gaps = [b - a for a, b in zip(times, times[1:]) if b >= start_ms and a <= end_ms]
        longest[app_id] = max(gaps, default=0) / 1000
    during = sum(sum(c.values()) for t, c in history if start_ms <= t <= end_ms)
    return {
        "setting": setting,
        "how": how,
        "rejoin_seconds": statistics.median(rejoins),
        "sent": sent[0],
        "delivered": sent[1],
        "failed": sent[2],
        "committed": committed,
        "roll_seconds": roll_end - roll_start,
        "longest_gap": max(longest.values()),
        "median_longest_gap": statistics.median(longest.values()),
        "events_per_second_during_roll": during / (roll_end - roll_start),
    }


def main():
    sluice, tansu, work, runs, rate = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    work.mkdir(parents=True, exist_ok=True)
    results = []
    only = os.environ.get("SLUICE_ROLL_ONLY")
    hows = os.environ.get("SLUICE_ROLL_HOW", "roll,kill").split(",")
    for run in range(runs):
        for how in hows:
            for setting in [s for s in SETTINGS if not only or s == only]:
                print(f"run {run + 1}/{runs}: {how}, {setting}", file=sys.stderr)
                result = one_run(sluice, tansu, work, setting, rate, how)
                print(json.dumps(result), file=sys.stderr)
                results.append(result)
    print(f"rate {rate:.0f} events/s, 3 workers, 6 partitions, medians of {runs} run(s)")
    print(f"{'restart':<8} {'setting':<8} {'all 3 s':>8} {'rejoin s':>9} {'longest gap s':>14} "
          f"{'median partition longest gap s':>31} {'events/s during':>16} {'all committed':>14}")
    for how in hows:
        summary = {}
        for setting in SETTINGS:
            rows = [r for r in results if r["setting"] == setting and r["how"] == how]
            if not rows:
                continue
            med = {k: statistics.median(r[k] for r in rows)
                   for k in ("roll_seconds", "rejoin_seconds", "longest_gap", "median_longest_gap",
                             "events_per_second_during_roll")}
            summary[setting] = med
            complete = all(r["committed"] == r["delivered"] and r["failed"] == 0 for r in rows)
            print(f"{how:<8} {setting:<8} {med['roll_seconds']:>8.1f} {med['rejoin_seconds']:>9.1f} "
                  f"{med['longest_gap']:>14.1f} {med['median_longest_gap']:>31.1f} "
                  f"{med['events_per_second_during_roll']:>16.0f} {str(complete):>14}")
        if len(summary) == 2:
            eager, static = summary["eager"], summary["static"]
            print(f"{how}: static/eager longest gap {static['longest_gap'] / max(eager['longest_gap'], 1e-9):.2f}x, "
                  f"events/s during the restarts "
                  f"{static['events_per_second_during_roll'] / max(eager['events_per_second_during_roll'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
