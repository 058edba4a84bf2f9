#!/usr/bin/env python3
"""Independent reader check: Spark reads sluice's Delta tables.

For every table listed in <dir>/manifest.jsonl ({"table": path, "expected_rows": n},
optionally "types": {column: Spark simpleString} and "comments": {column: text}),
replay the Delta log (JSON commits, and the last classic checkpoint if any,
read with Spark itself), parse the schema with Spark's own
`StructType.fromJson(schemaString)`, read every live data file with Spark's
Parquet reader, and check:
  - the row count equals the expected count,
  - every column Spark infers from the Parquet files has the Delta schema's
    type (timestamps come back as TimestampType, not TimestampNTZ),
  - every column can be decoded (count of non-nulls per column),
  - the listed columns have the listed types and comments (the comment
    `DESCRIBE TABLE` shows comes from the schema field's metadata).
Exits non-zero on any mismatch.
"""
import json
import sys
from pathlib import Path
from urllib.parse import unquote

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType


def live_files(spark, table: Path):
    log = table / "_delta_log"
    files, metadata, start = {}, None, -1
    last_checkpoint = log / "_last_checkpoint"
    if last_checkpoint.exists():
        start = json.loads(last_checkpoint.read_text())["version"]
        checkpoint = spark.read.parquet(str(log / f"{start:020d}.checkpoint.parquet"))
        for row in checkpoint.collect():
            if row["add"] is not None:
                files[row["add"]["path"]] = row["add"]["size"]
            if row["metaData"] is not None:
                metadata = row["metaData"].asDict(recursive=True)
    for commit in sorted(log.glob("*.json")):
        if int(commit.stem) <= start:
            continue
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                files[action["add"]["path"]] = action["add"]["size"]
            elif "remove" in action:
                files.pop(action["remove"]["path"], None)
            elif "metaData" in action:
                metadata = action["metaData"]
    return metadata, [str(table / unquote(path)) for path in files]


def check_declared(table: Path, schema: StructType, entry: dict) -> list:
    problems = []
    fields = {f.name: f for f in schema.fields}
    for name, wanted in entry.get("types", {}).items():
        got = fields[name].dataType.simpleString() if name in fields else None
        if got != wanted:
            problems.append(f"{table}: column {name} is {got} for Spark, expected {wanted}")
    for name, wanted in entry.get("comments", {}).items():
        # A dotted name is a field of a struct column.
        field, *inner = name.split(".")
        found = fields.get(field)
        for part in inner:
            nested = {f.name: f for f in found.dataType.fields} if found and isinstance(found.dataType, StructType) else {}
            found = nested.get(part)
        got = found.metadata.get("comment") if found else None
        if got != wanted:
            problems.append(f"{table}: column {name} has comment {got!r} for Spark, expected {wanted!r}")
    return problems


def check(spark, table: Path, expected: int, entry: dict) -> list:
    problems = []
    metadata, files = live_files(spark, table)
    schema = StructType.fromJson(json.loads(metadata["schemaString"]))
    problems += check_declared(table, schema, entry)
    partitions = set(metadata.get("partitionColumns") or [])
    if not files:
        return [] if expected == 0 else [f"{table}: no live files, expected {expected} rows"]
    # Files written before the schema grew lack its new columns: merge the
    # file schemas, as Delta readers do with the table's schema.
    frame = spark.read.option("basePath", str(table)).option("mergeSchema", "true").parquet(*files)
    inferred = {f.name: f.dataType for f in frame.schema.fields}
    for field in schema.fields:
        if field.name in partitions:
            continue
        got = inferred.get(field.name)
        if got is None or got.simpleString() != field.dataType.simpleString():
            problems.append(f"{table}: column {field.name} is {got} in Parquet, {field.dataType} in Delta")
    data_columns = [f.name for f in schema.fields if f.name not in partitions]
    row = frame.agg(F.count(F.lit(1)).alias("rows"), *[F.count(F.col(c)).alias(c) for c in data_columns]).collect()[0]
    if row["rows"] != expected:
        problems.append(f"{table}: Spark read {row['rows']} rows, expected {expected}")
    print(f"spark: {table.name}: {row['rows']} rows in {len(files)} files, {len(schema.fields)} columns"
          f" ({'ok' if not problems else 'MISMATCH'})")
    return problems


def main() -> int:
    root = Path(sys.argv[1])
    entries = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]
    if not entries:
        print("spark: no tables registered", file=sys.stderr)
        return 1
    import os
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    spark = (SparkSession.builder.master("local[2]").appName("sluice-spark-check")
             .config("spark.ui.enabled", "false")
             .config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    problems = []
    for entry in entries:
        problems += check(spark, Path(entry["table"]), int(entry["expected_rows"]), entry)
    spark.stop()
    for problem in problems:
        print(f"spark: {problem}", file=sys.stderr)
    print(f"spark check: {len(entries)} tables read, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
