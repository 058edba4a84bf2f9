"""Delta tables as other writers make them, for `sluice check`'s tests.

Usage: foreign_tables.py OUT

Writes, with the `deltalake` Python package (delta-rs) and pyarrow, one
table per directory under OUT, each with something a reader may not take,
and prints a JSON object: table name -> the finding codes `sluice check`
must report for it.
"""

import datetime
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.transaction import AddAction

out = sys.argv[1]
when = datetime.datetime(2024, 5, 1, 12, 0)
expected = {}


def table(name):
    return os.path.join(out, name)


# A local date-time column: Delta `timestamp_ntz` (reader feature timestampNtz).
write_deltalake(table("ntz"), pa.table({"id": ["a"], "at": pa.array([when], pa.timestamp("us"))}))
expected["ntz"] = ["reader-feature", "timestamp-ntz", "local-timestamp"]

# Column mapping by name (reader 2): names Spark would otherwise refuse.
write_deltalake(table("mapped"), pa.table({"user id": ["a"]}), configuration={"delta.columnMapping.mode": "name"})
expected["mapped"] = ["column-name"]  # BigQuery still needs plain names

# The same name without column mapping.
write_deltalake(table("spaced"), pa.table({"user id": ["a"]}))
expected["spaced"] = ["column-name"]

# Deletion vectors enabled: delta-rs adds the variantType reader feature.
write_deltalake(table("features"), pa.table({"id": ["a"]}), configuration={"delta.enableDeletionVectors": "true"})
expected["features"] = ["reader-feature"]

# v2 checkpoints asked for.
write_deltalake(table("v2"), pa.table({"id": ["a"]}), configuration={"delta.checkpointPolicy": "v2"})
expected["v2"] = ["v2-checkpoint"]

# A timestamp partition column, and partition values with `/` and `:`.
write_deltalake(
    table("partitioned"),
    pa.table({"id": ["a"], "at": pa.array([when], pa.timestamp("us", tz="UTC")), "path": ["a/b:c"]}),
    partition_by=["at", "path"],
)
expected["partitioned"] = ["timestamp-partition", "partition-value"]

# One commit of 11 MiB of JSON and no checkpoint.
write_deltalake(table("long_log"), pa.table({"id": ["a"]}),
                commit_properties=CommitProperties(custom_metadata={"note": "x" * (11 << 20)}))
expected["long_log"] = ["log-size"]

# A file written by pyarrow alone (unsigned and nanosecond columns, INT96
# timestamps) added to a delta-rs table, then a checkpoint without struct
# statistics (delta-rs's default).
write_deltalake(table("files"), pa.table({"id": ["a"], "n": pa.array([1], pa.int64())}))
foreign = pa.table({
    "id": ["b"],
    "n": pa.array([2], pa.uint64()),
    "small": pa.array([3], pa.uint16()),
    "at": pa.array([when], pa.timestamp("ns", tz="UTC")),
})
pq.write_table(foreign, os.path.join(table("files"), "part-foreign.parquet"), version="2.6")
legacy = pa.table({"id": ["c"], "at": pa.array([when], pa.timestamp("us", tz="UTC"))})
pq.write_table(legacy, os.path.join(table("files"), "part-legacy.parquet"), use_deprecated_int96_timestamps=True)
files = DeltaTable(table("files"))
now_ms = int(datetime.datetime.now().timestamp() * 1000)
files.create_write_transaction(
    [AddAction(path=name, size=os.path.getsize(os.path.join(table("files"), name)), partition_values={},
               modification_time=now_ms, data_change=True, stats='{"numRecords":1}')
     for name in ("part-foreign.parquet", "part-legacy.parquet")],
    mode="append", schema=files.schema(), partition_by=[])
DeltaTable(table("files")).create_checkpoint()
expected["files"] = ["unsigned-64", "unsigned", "nanosecond-timestamp", "int96", "checkpoint-stats"]

# Nothing wrong: a plain table with a checkpoint.
write_deltalake(table("plain"), pa.table({"id": ["a"], "at": pa.array([when], pa.timestamp("us", tz="UTC"))}))
expected["plain"] = []

print(json.dumps(expected))
