"""MongoDB change events with partial updates, as Debezium writes them.

Usage: mongo_patch_events.py OUT_DIR KEYS STEPS SEED

Writes OUT_DIR/events.jsonl (one {"key", "value"} per Kafka record, "" for
a tombstone) and OUT_DIR/expected.json (the collection's final state by
ObjectId hex, and counts). Documents, filters and patches are encoded with
pymongo's bson.json_util (extended JSON), in the shapes the connector uses:

- inserts (`c`) with the whole document in `after`;
- updates with the whole document in `after` (change streams with the full
  document);
- oplog patches of older connectors: `patch` = `{"$v": 1, "$set", "$unset"}`
  or oplog v2 `{"$v": 2, "diff": {"u", "i", "d"}}`, key in `filter`;
- change-stream updates without the document: `updateDescription` with
  `updatedFields` (extended-JSON text) and `removedFields`, key in the
  record key only;
- deletes with the key in the record key (and `filter` in oplog style),
  each followed by a tombstone half the time.

About 3% of the steps replay the last 40 events in order (a restarted
connector); replays change nothing. Two events are bad on purpose: a patch
inside a declared field and the truncation of one (dead letters); the last
patches a document the collection never held.
"""

import datetime
import json
import random
import sys

from bson import json_util
from bson.int64 import Int64
from bson.objectid import ObjectId

out, keys, steps, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
opts = json_util.CANONICAL_JSON_OPTIONS
base_ms = 1_700_000_000_000

ids = [ObjectId(f"{i:024x}") for i in range(1, keys + 1)]
state = {}  # oid -> document
events = []


def at(ms):
    """The instant `ms` milliseconds after the epoch, exactly."""
    return datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(milliseconds=ms)


def dumps(doc):
    return json_util.dumps(doc, json_options=opts)


def source(step):
    return {
        "version": "1.9.7.Final", "connector": "mongodb", "name": "shop",
        "ts_ms": base_ms + step * 10, "snapshot": "false", "db": "shop",
        "rs": "rs0", "collection": "people", "ord": 1 + step % 3,
    }


def record_key(oid):
    return json.dumps({"id": dumps(oid)})


def envelope(step, op, **fields):
    value = {"after": None, "patch": None, "filter": None, "source": source(step),
             "op": op, "ts_ms": base_ms + step * 10 + 5}
    value.update(fields)
    return json.dumps(value)


def document(oid, step):
    return {
        "_id": oid,
        "name": f"name-{step}",
        "visits": Int64(rng.randrange(1_000_000)),
        "since": at(base_ms + step),
    }


def changed_fields(step):
    """Fields an update sets and removes (never the key)."""
    fields = ["name", "visits", "since"]
    chosen = rng.sample(fields, rng.randint(1, 2))
    sets, removed = {}, []
    for field in chosen:
        if field != "name" and rng.random() < 0.3:
            removed.append(field)
        elif field == "name":
            sets["name"] = f"patched-{step}"
        elif field == "visits":
            sets["visits"] = Int64(rng.randrange(1_000_000))
        else:
            sets["since"] = at(base_ms + 7 * step)
    return sets, removed


for step in range(steps):
    roll = rng.randrange(100)
    if roll < 3 and len(events) > 40:
        events.extend(events[-40:])
        continue
    oid = rng.choice(ids)
    key = record_key(oid)
    doc = state.get(oid)
    if doc is None:
        doc = document(oid, step)
        events.append((key, envelope(step, "c", after=dumps(doc))))
        state[oid] = doc
        continue
    kind = rng.randrange(10)
    if kind == 0:
        events.append((key, envelope(step, "d", filter=dumps({"_id": oid}))))
        del state[oid]
        if rng.random() < 0.5:
            events.append((key, ""))
        continue
    if kind == 1:
        doc = document(oid, step)
        events.append((key, envelope(step, "u", after=dumps(doc))))
        state[oid] = doc
        continue
    sets, removed = changed_fields(step)
    shape = kind % 3
    if shape == 0:
        patch = {"$v": 1}
        if sets:
            patch["$set"] = sets
        if removed:
            patch["$unset"] = {f: True for f in removed}
        events.append((key, envelope(step, "u", patch=dumps(patch), filter=dumps({"_id": oid}))))
    elif shape == 1:
        diff = {}
        if sets:
            diff["u"] = sets
        if removed:
            diff["d"] = {f: False for f in removed}
        patch = {"$v": 2, "diff": diff}
        events.append((key, envelope(step, "u", patch=dumps(patch), filter=dumps({"_id": oid}))))
    else:
        description = {"updatedFields": dumps(sets), "removedFields": removed, "truncatedArrays": []}
        events.append((key, envelope(step, "u", updateDescription=description)))
    for field, value in sets.items():
        doc[field] = value
    for field in removed:
        doc.pop(field, None)

# Two events no row can take: a change inside a declared field, and the
# truncation of one.
bad_step = steps + 1
some = ids[0]
events.append((record_key(some), envelope(bad_step, "u", patch=dumps({"$v": 1, "$set": {"name.first": "Ann"}}),
                                          filter=dumps({"_id": some}))))
events.append((record_key(some), envelope(bad_step + 1, "u", updateDescription={
    "updatedFields": "{}", "removedFields": [], "truncatedArrays": [{"field": "name", "newSize": 1}]})))

# A partial update of a document the collection never held: nothing to apply it to.
stray = ObjectId("f" * 24)
events.append((record_key(stray), envelope(bad_step + 2, "u", patch=dumps({"$v": 1, "$set": {"name": "nobody"}}),
                                           filter=dumps({"_id": stray}))))

with open(f"{out}/events.jsonl", "w") as f:
    for key, value in events:
        f.write(json.dumps({"key": key, "value": value}) + "\n")


def millis(value):
    if value is None:
        return None
    return (value - at(0)) // datetime.timedelta(milliseconds=1)


expected = {
    str(oid): {"name": d.get("name"), "visits": d.get("visits"), "since_ms": millis(d.get("since"))}
    for oid, d in state.items()
}
with open(f"{out}/expected.json", "w") as f:
    json.dump({
        "rows": expected,
        "mutations": sum(1 for _, v in events if v),
        "partial": sum(1 for _, v in events if v and (json.loads(v).get("patch") or json.loads(v).get("updateDescription"))) - 2,
    }, f)
