#!/usr/bin/env python3
"""Erasure by key, sluice side by side with delta-rs's own delete.

usage: bench_forget.py SLUICE_BIN WORK_DIR KEYS[,KEYS...] [RUNS] [ROWS]

Builds one table of ROWS rows (default 5,200,000: about 1.1 GB of zstd
Parquet) in 512 files with random users (`sluice bench erase-table`: bloom
filter on user_id, like every sluice table), and a Z-ordered copy of it
(`sluice zorder --by user_id --target-size 2MiB`: about as many files, with
narrow user ranges). Then, for each layout and each key count, on fresh
copies of the table:
  sluice     `sluice forget request --keys-file ...` then `sluice forget apply` (timed)
  delta-rs   `DeltaTable.delete("user_id IN (...)")` (the `deltalake` Python package)
and reports per tool the median wall time, files and bytes rewritten, rows
deleted (checked equal between the tools) and peak RSS, and the speed ratio.
"""
import json
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_maintain import measured, table_stats  # noqa: E402

USERS = 1_000_000

CONFIG = """
[lake]
root = "{root}"
[maintenance]
enabled = false
[erasure]
enabled = false
[[sources]]
kind = "file"
name = "none"
path = "{root}/none.ndjson"
[[tables]]
name = "events"
source = "none"
key = "user_id"
columns = [
  {{ name = "event_id", type = "string", nullable = false }},
  {{ name = "user_id", type = "string", nullable = false }},
  {{ name = "event_time", type = "timestamp", nullable = false }},
  {{ name = "amount", type = "double" }},
  {{ name = "payload", type = "string" }},
]
"""

DELTA_RS = (
    "from deltalake import DeltaTable; import json, sys; "
    "keys = open(sys.argv[2]).read().split(); "
    "predicate = 'user_id IN (' + ', '.join(repr(k) for k in keys) + ')'; "
    "print(json.dumps(DeltaTable(sys.argv[1]).delete(predicate)))"
)


def live_files(path):
    files = {}
    for commit in sorted((Path(path) / "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                files[action["add"]["path"]] = action["add"]["size"]
            elif "remove" in action:
                files.pop(action["remove"]["path"], None)
    return files


def fresh_copy(source, run_root):
    shutil.rmtree(run_root, ignore_errors=True)
    run_root.mkdir(parents=True)
    shutil.copytree(source, run_root / "events")
    return run_root / "events"


def run_sluice(sluice, base, run_root, keys_file):
    table = fresh_copy(base, run_root)
    config = run_root / "sluice.toml"
    config.write_text(CONFIG.format(root=run_root))
    subprocess.run([sluice, "-q", "forget", "-c", str(config), "request", "--keys-file", str(keys_file),
                    "--all", "--reason", "bench", "--json"], check=True, stdout=subprocess.DEVNULL)
    seconds, rss, out = measured([sluice, "-q", "forget", "-c", str(config), "apply", "--json"])
    report = json.loads(out)["applied"][0]
    return {"seconds": seconds, "rss": rss, "files": report["files_rewritten"],
            "bytes": report["bytes_rewritten"], "rows": report["rows_deleted"],
            "read": report["files_read"], "in_range": report["files_in_range"],
            "live_rows": table_stats(table)[1]}


def run_delta_rs(python, base, run_root, keys_file):
    table = fresh_copy(base, run_root)
    before = live_files(table)
    seconds, rss, out = measured([python, "-c", DELTA_RS, str(table), str(keys_file)])
    metrics = json.loads(out)
    after = live_files(table)
    removed = [p for p in before if p not in after]
    return {"seconds": seconds, "rss": rss, "files": len(removed),
            "bytes": sum(before[p] for p in removed), "rows": metrics["num_deleted_rows"],
            "read": None, "in_range": None, "live_rows": table_stats(table)[1]}


def main():
    sluice, work = sys.argv[1], Path(sys.argv[2])
    key_counts = [int(k) for k in sys.argv[3].split(",")]
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    rows = int(sys.argv[5]) if len(sys.argv) > 5 else 5_200_000
    python = sys.executable
    work.mkdir(parents=True, exist_ok=True)

    base = work / "base" / "events"
    seconds, _, out = measured([sluice, "-q", "bench", "erase-table", "--lake", str(base),
                                "--events", str(rows), "--files", "512", "--users", str(USERS)])
    files, total_rows, size = table_stats(base)
    print(f"table: {total_rows} rows, {files} files, {size / 1e9:.2f} GB (built in {seconds:.0f}s)", file=sys.stderr)
    zbase = work / "zbase" / "events"
    shutil.rmtree(zbase.parent, ignore_errors=True)
    shutil.copytree(base, zbase)
    seconds, _, _ = measured([sluice, "-q", "zorder", str(zbase), "--by", "user_id",
                              "--target-size", "2MiB", "--memory-budget", "512MiB", "--json"])
    subprocess.run([sluice, "-q", "vacuum", str(zbase), "--retention", "0s", "--force"], check=True,
                   stdout=subprocess.DEVNULL)
    zfiles, _, zsize = table_stats(zbase)
    print(f"z-ordered copy: {zfiles} files, {zsize / 1e9:.2f} GB ({seconds:.0f}s)", file=sys.stderr)

    rng = random.Random(11)
    results = []
    for layout, source in (("unordered", base), ("z-ordered", zbase)):
        for count in key_counts:
            keys_file = work / f"keys-{count}.txt"
            users = rng.sample(range(USERS), count)
            keys_file.write_text("".join(f"user_id=user-{u:07d}\n" for u in users))
            plain_keys = work / f"plain-keys-{count}.txt"
            plain_keys.write_text("".join(f"user-{u:07d}\n" for u in users))
            per_tool = {"sluice": [], "delta-rs": []}
            for run in range(runs):
                print(f"{layout} {count} keys run {run + 1}/{runs}", file=sys.stderr)
                per_tool["sluice"].append(run_sluice(sluice, source, work / "run", keys_file))
                per_tool["delta-rs"].append(run_delta_rs(python, source, work / "run", plain_keys))
            a, b = per_tool["sluice"][0], per_tool["delta-rs"][0]
            if (a["rows"], a["live_rows"]) != (b["rows"], b["live_rows"]):
                sys.exit(f"{layout}/{count}: rows differ: sluice {a}, delta-rs {b}")
            results.append((layout, count, per_tool))
    shutil.rmtree(work / "run", ignore_errors=True)

    print(f"{'layout':<10} {'keys':>5} {'tool':<9} {'seconds':>8} {'files rewritten':>16} "
          f"{'MB rewritten':>13} {'rows deleted':>13} {'peak RSS MiB':>13}  speed ratio")
    for layout, count, per_tool in results:
        median = {tool: statistics.median(r["seconds"] for r in rs) for tool, rs in per_tool.items()}
        for tool, rs in per_tool.items():
            r = rs[0]
            ratio = f"{median['delta-rs'] / median['sluice']:.2f}x" if tool == "sluice" else ""
            files = f"{r['files']}" + (f" (read {r['read']}/{r['in_range']})" if r["read"] is not None else "")
            print(f"{layout:<10} {count:>5} {tool:<9} {median[tool]:>8.2f} {files:>16} "
                  f"{r['bytes'] / 1e6:>13.1f} {r['rows']:>13} "
                  f"{statistics.median(x['rss'] for x in rs):>13.0f}  {ratio}")


if __name__ == "__main__":
    main()
