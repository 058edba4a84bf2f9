#!/usr/bin/env python3
"""Compaction and Z-order, sluice side by side with delta-rs's own optimize.

usage: bench_maintain.py SLUICE_BIN WORK_DIR compact|zorder EVENTS[,EVENTS...] [RUNS]

For each table size: builds one fragmented table (the demo's ride events
ingested by sluice from NDJSON in batches of 500 rows, so thousands of small
files), copies it for every run of each tool, then runs
  sluice compact|zorder ... --json      (a subprocess)
  delta-rs optimize.compact|z_order     (the `deltalake` Python package, a subprocess)
with the same target size, and reports per tool the median wall time, input
MB/s, peak RSS of the process (from wait4), output file count, and the
sluice/delta-rs speed ratio. Row counts are checked equal afterwards.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET = 64 << 20
ZORDER_BUDGET = 256 << 20

DELTA_RS = {
    "compact": "from deltalake import DeltaTable; import json, sys; "
               "m = DeltaTable(sys.argv[1]).optimize.compact(target_size=int(sys.argv[2])); print(json.dumps(m))",
    "zorder": "from deltalake import DeltaTable; import json, sys; "
              "m = DeltaTable(sys.argv[1]).optimize.z_order(['user_id'], target_size=int(sys.argv[2]), "
              "max_spill_size=int(sys.argv[3])); print(json.dumps(m))",
}


def measured(cmd):
    """Runs cmd; returns (seconds, peak RSS MiB, stdout)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    if status != 0:
        sys.exit(f"{cmd[0]} failed ({status}): {err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, out.decode()


def table_stats(path):
    files, rows, size = 0, 0, 0
    live = {}
    log = Path(path) / "_delta_log"
    for commit in sorted(log.glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = action["add"]
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    for add in live.values():
        files += 1
        size += add["size"]
        rows += json.loads(add["stats"])["numRecords"]
    return files, rows, size


def ingest_rides(sluice, base, events, max_rows):
    """Generates `events` demo events under `base` and ingests them into
    `base/rides` in commits of `max_rows` rows (maintenance off)."""
    base.mkdir(parents=True, exist_ok=True)
    data = base / "events.ndjson"
    subprocess.run([sluice, "-q", "generate", "--out", str(data), "--count", str(events), "--seed", "3"], check=True)
    columns = (Path(__file__).parent.parent / "fixtures" / "rides_columns.toml").read_text()
    config = base / "ingest.toml"
    config.write_text(f"""
[lake]
root = "{base}"
[batching]
max_rows = {max_rows}
[maintenance]
enabled = false
[[sources]]
kind = "file"
name = "backfill"
path = "{data}"
[[tables]]
name = "rides"
source = "backfill"
{columns}
""")
    subprocess.run([sluice, "-q", "ingest", "--config", str(config)], check=True)
    return base / "rides"


def build_table(sluice, work, events):
    base = work / f"base-{events}"
    if (base / "rides" / "_delta_log").exists():
        return base / "rides"
    return ingest_rides(sluice, base, events, 500)


def open_row(sluice, label, table, runs):
    """Times opening `table` `runs` times; prints one row; returns the median."""
    pointer = table / "_delta_log" / "_last_checkpoint"
    checkpoint = json.loads(pointer.read_text()) if pointer.exists() else {"version": -1, "size": 0}
    last = checkpoint["version"]
    replay = sum(1 for c in (table / "_delta_log").glob("*.json") if int(c.stem) > last)
    times = [json.loads(measured([sluice, "-q", "bench", "open", "--input", str(table)])[2])["seconds"]
             for _ in range(runs)]
    median = statistics.median(times)
    # Live files as delta-rs sees them (the JSON commits alone may be gone).
    files = int(subprocess.run([sys.executable, "-c",
                                "from deltalake import DeltaTable; import sys; print(len(DeltaTable(sys.argv[1]).file_uris()))",
                                str(table)], check=True, capture_output=True, text=True).stdout)
    # Commit latency: per run, the mean of 30 appends of 10 rows on a fresh
    # copy (3 of them write a checkpoint); the median over the runs.
    commits = []
    for _ in range(runs):
        copy = table.parent / "commit-copy" / "rides"
        shutil.rmtree(copy.parent, ignore_errors=True)
        shutil.copytree(table, copy)
        out = measured([sluice, "-q", "bench", "commit", "--input", str(copy), "--events", "300"])[2]
        commits.append(json.loads(out)["seconds"])
        shutil.rmtree(copy.parent)
    commit = {"seconds": statistics.median(commits)}
    # Actions in the checkpoint: live adds plus the tombstones of files
    # removed within delta.deletedFileRetentionDuration (kept for vacuum).
    print(f"{label:>24} {files:>10} {replay:>22} {checkpoint['size']:>18} {median:>13.4f} {commit['seconds']:>14.4f}")
    return median, commit["seconds"]


def bench_log(sluice, work, sizes, runs):
    """Opening a table with N commits (compacted, so the live files match).

    The largest size is measured again as it would be once its retention
    windows have passed: first delta.deletedFileRetentionDuration is set to
    one second (with delta-rs) and a new checkpoint leaves the expired
    tombstones out; then delta.logRetentionDuration too, and the checkpoint's
    log cleanup deletes the expired commits (what any table reaches once its
    files were removed, and its commits written, longer ago than that)."""
    print(f"{'commits':>24} {'live files':>10} {'json commits to replay':>22} {'checkpoint actions':>18} {'open seconds':>13} {'commit seconds':>14}")
    medians = {}
    for commits in sizes:
        base = work / f"log-{commits}"
        table = base / "rides"
        if not (table / "_delta_log").exists():
            ingest_rides(sluice, base, commits * 10, 10)
            # Same live files either way: compact, then checkpoint (history kept).
            subprocess.run([sluice, "-q", "compact", str(table), "--json"], check=True, capture_output=True)
            subprocess.run([sluice, "-q", "checkpoint", str(table), "--no-cleanup"], check=True, capture_output=True)
        medians[commits] = open_row(sluice, str(commits), table, runs)
    small, large = min(medians), max(medians)
    aged = work / f"log-{large}-aged" / "rides"
    shutil.rmtree(aged.parent, ignore_errors=True)
    shutil.copytree(work / f"log-{large}" / "rides", aged)
    after = {}
    for label, prop, cleanup in (("tombstones expired", "delta.deletedFileRetentionDuration", ["--no-cleanup"]),
                                 ("and log cleaned", "delta.logRetentionDuration", [])):
        subprocess.run([sys.executable, "-c",
                        "from deltalake import DeltaTable; import sys; "
                        "DeltaTable(sys.argv[1]).alter.set_table_properties({sys.argv[2]: 'interval 1 seconds'})",
                        str(aged), prop], check=True)
        time.sleep(1.5)
        subprocess.run([sluice, "-q", "checkpoint", str(aged), *cleanup], check=True, capture_output=True)
        after[label] = open_row(sluice, f"{large}, {label}", aged, runs)
    shutil.rmtree(aged.parent)
    for what, i in (("open", 0), ("commit", 1)):
        print(f"{what} time {large} commits / {small} commits = {medians[large][i] / medians[small][i]:.2f}")
        for label, median in after.items():
            print(f"{what} time {large} commits, {label} / {small} commits = {median[i] / medians[small][i]:.2f}")


def main():
    sluice, work, mode, sizes = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    if mode == "log":
        return bench_log(sluice, work, [int(s) for s in sizes.split(",")], int(sys.argv[5]) if len(sys.argv) > 5 else 5)
    runs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    python = sys.executable
    print(f"{'events':>9} {'tool':<9} {'files in':>8} {'MB in':>7} {'seconds':>8} {'MB/s':>7} {'peak RSS MiB':>13} {'files out':>9}")
    for events in [int(s) for s in sizes.split(",")]:
        source = build_table(sluice, work, events)
        files_in, rows_in, bytes_in = table_stats(source)
        results = {"sluice": [], "delta-rs": []}
        for run in range(runs):
            for tool in ("sluice", "delta-rs"):
                copy = work / f"run-{tool}-{events}-{run}"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(source, copy)
                if tool == "sluice":
                    cmd = [sluice, "-q", mode, str(copy), "--target-size", str(TARGET), "--json"]
                    if mode == "zorder":
                        cmd += ["--by", "user_id", "--memory-budget", str(ZORDER_BUDGET)]
                else:
                    cmd = [python, "-c", DELTA_RS[mode], str(copy), str(TARGET), str(ZORDER_BUDGET)]
                seconds, rss, _ = measured(cmd)
                files_out, rows_out, _ = table_stats(copy)
                if rows_out != rows_in:
                    sys.exit(f"{tool} changed the row count: {rows_in} -> {rows_out}")
                results[tool].append((seconds, rss, files_out))
                shutil.rmtree(copy)
        medians = {}
        for tool, rows in results.items():
            seconds = statistics.median(r[0] for r in rows)
            rss = statistics.median(r[1] for r in rows)
            medians[tool] = seconds
            print(f"{events:>9} {tool:<9} {files_in:>8} {bytes_in / 1e6:>7.1f} {seconds:>8.2f} "
                  f"{bytes_in / 1e6 / seconds:>7.1f} {rss:>13.0f} {rows[0][2]:>9}")
        print(f"{events:>9} speed sluice/delta-rs = {medians['delta-rs'] / medians['sluice']:.2f}")


if __name__ == "__main__":
    main()
