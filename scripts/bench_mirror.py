#!/usr/bin/env python3
"""Mirror-table merges, sluice side by side with delta-rs's own merge.

usage: bench_mirror.py SLUICE_BIN WORK_DIR [KEYS] [BATCHES] [BATCH_SIZE]

Builds a mirror table of KEYS customers (default 5,000,000: about 1 GB of
zstd Parquet in 32 MiB files) by ingesting a Debezium PostgreSQL snapshot
(`r` events, in random key order) with `sluice ingest` into a
`mode = "mirror"` table (with the `deletionVectors` feature, as sluice
creates mirror tables), and a copy Z-ordered by the key (`sluice zorder
--by id`). Then, for each layout, applies BATCHES batches (default 5) of
BATCH_SIZE change events (default 10,000: 80% updates spread over the key
space, 10% inserts, 10% deletes, distinct keys) one after another:
  sluice     `sluice ingest` of the batch's NDJSON (a file source,
             `format = "debezium"`): decode, collapse, find, mark replaced
             rows in deletion vectors, append and commit; the process's
             wall time
  sluice-cow the same with `deletion_vectors = false`: the files holding a
             key are rewritten without its rows (copy-on-write)
  delta-rs   `DeltaTable(path).merge(batch, "t.id = s.id")` with
             `when_matched_delete` (op d), `when_matched_update_all` and
             `when_not_matched_insert_all` (other ops), given the batch
             already decoded into Arrow; load and merge timed in its process
on copies of the same table, and reports per layout and tool the median
time per batch, files and bytes rewritten per batch, bytes written (new
data files and deletion vector files) and peak RSS, the speed and bytes
ratios, and checks that the tables end with the same (id, balance) rows,
read by delta-rs's DataFusion reader (which applies deletion vectors).
"""
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_forget import live_files  # noqa: E402
from bench_maintain import measured, table_stats  # noqa: E402

CONFIG = """
[lake]
root = "{root}"
[batching]
max_latency = "1h"
max_rows = {rows}
max_bytes = "16GiB"
memory_budget = "16GiB"
target_file_size = "32MiB"
[maintenance]
enabled = false
[erasure]
enabled = false
[[sources]]
kind = "file"
name = "changes"
path = "{input}"
format = "debezium"
[[tables]]
name = "customers"
source = "changes"
key = "id"
mode = "mirror"
primary_key = ["id"]
{vectors}columns = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "name", type = "string", nullable = false }},
  {{ name = "email", type = "string" }},
  {{ name = "balance", type = "long" }},
  {{ name = "note", type = "string" }},
]
"""

DELTA_RS = r"""
import json, sys, time
import pyarrow as pa
from deltalake import DeltaTable
text = pa.string()
schema = pa.schema([
    ("cdc_op", text), ("cdc_ts", pa.timestamp("us", "UTC")), ("cdc_position", text),
    ("cdc_order", text), ("cdc_db", text), ("cdc_table", text), ("cdc_tx", text),
    ("cdc_patched", text), ("id", pa.int64()), ("name", text), ("email", text), ("balance", pa.int64()), ("note", text),
])
rows = [json.loads(l) for l in open(sys.argv[2])]
batch = pa.Table.from_pylist(rows, schema=schema)
started = time.monotonic()
table = DeltaTable(sys.argv[1])
metrics = (
    table.merge(batch, predicate="t.id = s.id", source_alias="s", target_alias="t")
    .when_matched_delete(predicate="s.cdc_op = 'd'")
    .when_matched_update_all(predicate="s.cdc_op != 'd'")
    .when_not_matched_insert_all(predicate="s.cdc_op != 'd'")
    .execute()
)
print(json.dumps({"seconds": time.monotonic() - started, "metrics": metrics}))
"""

CHECK = r"""
import json, sys
from deltalake import DeltaTable, QueryBuilder
t = QueryBuilder().register("t", DeltaTable(sys.argv[1])).execute("select id, balance from t").read_all()
rows = sorted(zip(t.column("id").to_pylist(), t.column("balance").to_pylist()))
print(json.dumps({"rows": len(rows), "ids": len({r[0] for r in rows}), "hash": hash(tuple(rows))}))
"""

TOOLS = ("sluice", "sluice-cow", "delta-rs")


def image(rng, key, version):
    return {
        "id": key,
        "name": f"customer-{key}-{version}",
        "email": f"c{key}@example.com",
        "balance": rng.randrange(1_000_000),
        "note": os.urandom(180).hex(),
    }


def envelope(op, key, before, after, lsn):
    return json.dumps({
        "before": before, "after": after, "op": op, "ts_ms": 1_700_000_000_000 + lsn,
        "source": {"connector": "postgresql", "db": "shop", "schema": "public",
                   "table": "customers", "lsn": lsn, "ts_ms": 1_700_000_000_000 + lsn,
                   "sequence": json.dumps([str(lsn - 1), str(lsn)])},
    })


def flat(op, row, lsn):
    """The batch as delta-rs's merge source: the mirror table's columns."""
    order = f"{lsn - 1:020}/{lsn:020}"
    return {"cdc_op": op, "cdc_ts": None, "cdc_position": f"lsn={lsn}", "cdc_order": order,
            "cdc_db": "shop", "cdc_table": "customers", "cdc_tx": None, "cdc_patched": None, **row}


def write_snapshot(path, keys, rng):
    order = list(range(keys))
    rng.shuffle(order)
    with open(path, "w") as out:
        for key in order:
            out.write(envelope("r", key, None, image(rng, key, 0), 1000) + "\n")


def write_batches(work, keys, batches, size, rng):
    """Each batch's NDJSON (for sluice) and flattened rows (for delta-rs)."""
    live = set(range(keys))
    live_list = list(range(keys))
    next_key, lsn, paths = keys, 10_000, []
    for b in range(batches):
        events, rows, used = [], [], set()
        while len(events) < size:
            roll = rng.random()
            lsn += 1
            if roll < 0.1:
                key, next_key = next_key, next_key + 1
                op = "c"
            else:
                key = live_list[rng.randrange(len(live_list))]
                if key in used or key not in live:
                    continue
                op = "d" if roll < 0.2 else "u"
            used.add(key)
            row = image(rng, key, b + 1)
            if op == "d":
                events.append(envelope("d", key, row, None, lsn))
                live.discard(key)
            else:
                events.append(envelope(op, key, None, row, lsn))
                if op == "c":
                    live.add(key)
                    live_list.append(key)
            rows.append(flat(op, row, lsn))
        ndjson, flat_path = work / f"batch-{b}.ndjson", work / f"batch-{b}.rows.ndjson"
        ndjson.write_text("\n".join(events) + "\n")
        flat_path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        paths.append((ndjson, flat_path))
    return paths


def sluice_ingest(sluice, root, input_path, rows, vectors=True):
    config = root / f"{input_path.stem}.toml"
    config.write_text(CONFIG.format(root=root, input=input_path, rows=rows,
                                    vectors="" if vectors else "deletion_vectors = false\n"))
    return measured([sluice, "-q", "ingest", "--config", str(config)])


def last_merge(table):
    log = sorted((Path(table) / "_delta_log").glob("*.json"))[-1]
    for line in log.read_text().splitlines():
        info = json.loads(line).get("commitInfo", {}).get("sluice", {})
        if "merge" in info:
            return info["merge"]
    sys.exit(f"{log} is not a merge")


def main():
    sluice, work = sys.argv[1], Path(sys.argv[2])
    keys = int(sys.argv[3]) if len(sys.argv) > 3 else 5_000_000
    batches = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    size = int(sys.argv[5]) if len(sys.argv) > 5 else 10_000
    python = sys.executable
    rng = random.Random(17)
    work.mkdir(parents=True, exist_ok=True)
    base = work / f"base-dv-{keys}"
    zbase = work / f"zbase-dv-{keys}"
    if not (base / "customers" / "_delta_log").exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        snapshot = work / f"snapshot-{keys}.ndjson"
        write_snapshot(snapshot, keys, rng)
        seconds, rss, _ = sluice_ingest(sluice, base, snapshot, keys + 1)
        snapshot.unlink()
        print(f"built the mirror table: {keys} keys in {seconds:.0f} s, peak RSS {rss:.0f} MiB",
              flush=True)
    if not (zbase / "customers" / "_delta_log").exists():
        shutil.rmtree(zbase, ignore_errors=True)
        shutil.copytree(base, zbase)
        seconds, _, _ = measured([sluice, "-q", "zorder", str(zbase / "customers"), "--by", "id",
                                  "--target-size", "32MiB"])
        print(f"Z-ordered a copy by id in {seconds:.0f} s", flush=True)
    # A generator of its own: the batches must not depend on whether the
    # snapshot was generated in this run (nor correlate with its shuffle).
    batch_paths = write_batches(work, keys, batches, size, random.Random(29))
    results = []
    for layout, source in (("random", base), ("z-ordered", zbase)):
        files, rows, bytes_ = table_stats(source / "customers")
        print(f"\n{layout}: {rows} rows, {files} files, {bytes_ / 2**20:.0f} MiB", flush=True)
        runs = {}
        for tool in TOOLS:
            root = work / f"run-{layout}-{tool}"
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(source, root)
            table = root / "customers"
            for ndjson, rows_path in batch_paths:
                before = live_files(table)
                vectors_before = set(table.glob("deletion_vector_*.bin"))
                if tool.startswith("sluice"):
                    seconds, rss, _ = sluice_ingest(sluice, root, ndjson, size + 1,
                                                    vectors=tool == "sluice")
                    merge = last_merge(table)
                    rewritten = (merge["files_rewritten"], merge["bytes_rewritten"])
                else:
                    wall, rss, out = measured([python, "-c", DELTA_RS, str(table), str(rows_path)])
                    seconds = json.loads(out)["seconds"]
                    after = live_files(table)
                    gone = [p for p in before if p not in after]
                    rewritten = (len(gone), sum(before[p] for p in gone))
                after = live_files(table)
                written = sum(size for p, size in after.items() if p not in before) + sum(
                    v.stat().st_size for v in set(table.glob("deletion_vector_*.bin")) - vectors_before)
                runs.setdefault(tool, []).append((seconds, rewritten[0], rewritten[1], rss, written))
                print(f"  {tool:10} batch: {seconds:6.2f} s, {rewritten[0]:4} files / "
                      f"{rewritten[1] / 2**20:7.1f} MiB rewritten, {written / 2**20:7.1f} MiB written, "
                      f"peak RSS {rss:.0f} MiB", flush=True)
            runs[tool + "-check"] = json.loads(
                subprocess.run([python, "-c", CHECK, str(table)], check=True,
                               capture_output=True, text=True).stdout)
        for tool in TOOLS[:-1]:
            if runs[tool + "-check"] != runs["delta-rs-check"]:
                sys.exit(f"the tables differ: {tool} {runs[tool + '-check']} vs {runs['delta-rs-check']}")
        results.append((layout, files, bytes_, runs))

    print(f"\n{keys} keys, {batches} batches of {size} changes (80% updates, 10% inserts, "
          f"10% deletes), medians per batch; the tables end equal")
    print("| layout | tool | s/batch | files rewritten | MiB rewritten | MiB written | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for layout, _, _, runs in results:
        for tool in TOOLS:
            r = runs[tool]
            print(f"| {layout} | {tool} | {statistics.median(x[0] for x in r):.2f} | "
                  f"{statistics.median(x[1] for x in r):.0f} | "
                  f"{statistics.median(x[2] for x in r) / 2**20:.0f} | "
                  f"{statistics.median(x[4] for x in r) / 2**20:.1f} | "
                  f"{max(x[3] for x in r):.0f} |")
    for layout, _, _, runs in results:
        d = runs["delta-rs"]
        for tool in TOOLS[:-1]:
            s = runs[tool]
            speed = statistics.median(x[0] for x in d) / statistics.median(x[0] for x in s)
            rewritten = statistics.median(x[2] for x in s) / max(1, statistics.median(x[2] for x in d))
            written = statistics.median(x[4] for x in s) / max(1, statistics.median(x[4] for x in d))
            print(f"{layout}: {tool} is {speed:.2f}x delta-rs's speed per batch, "
                  f"rewrites {rewritten:.2f}x and writes {written:.2f}x its bytes")


if __name__ == "__main__":
    main()
