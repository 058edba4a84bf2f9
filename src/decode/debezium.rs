//! Change events in Debezium's JSON envelope as rows of a mutation-log
//! table: one row per database mutation.
//!
//! A record is the envelope (`op`, `before`, `after`, `source`, `ts_ms`,
//! `transaction`), bare or inside the JSON converter's `schema`/`payload`
//! wrapper. Its row holds the change's metadata and the row image the
//! table declares (`columns`): the `after` image, or for a delete (`d`) the
//! `before` image, so the key of a deleted row is still there; with
//! `before_image = true` on the table the `before` image is kept too, as
//! the struct `cdc_before`.
//!
//! | column | from |
//! | --- | --- |
//! | `cdc_op` | `op`: `c` insert, `u` update, `d` delete, `r` snapshot read |
//! | `cdc_ts` | `source.ts_ms`: the commit time at the source |
//! | `cdc_position` | PostgreSQL `lsn=…`, MySQL `file=…,pos=…,row=…`, MongoDB `ord=…,ts=…` |
//! | `cdc_db`, `cdc_table` | `source.db`, `source.table` (`source.collection` for MongoDB) |
//! | `cdc_tx` | `transaction.id`, when the connector adds transaction metadata |
//! | `cdc_patched` | a partial update's columns, comma-separated (see below) |
//!
//! A delete without a `before` image (MongoDB's by default) takes its key
//! columns from the Kafka record key (see `key_image`).
//!
//! Kafka tombstones (an empty value after a delete, for log compaction)
//! are recognised and skipped: counted in the lineage as skipped, never
//! dead-lettered. MongoDB's `after` and `before` may be extended-JSON text;
//! they are read with `$oid` as its hex string, `$date` as epoch
//! milliseconds, `$numberLong`/`$numberInt`/`$numberDouble`/
//! `$numberDecimal` as numbers. Truncate (`t`) and message (`m`) events, and
//! records that are not an envelope, are dead letters with the reason.
//!
//! MongoDB updates captured without the full document are partial: the
//! oplog `patch` of older connectors (`$set`/`$unset`, or the `diff` of
//! oplog v2) or the change stream's `updateDescription` (`updatedFields`,
//! `removedFields`). Their row holds the document key (from `filter` or
//! the record key), the fields set and the fields removed (as nulls), and
//! `cdc_patched` names the columns they set or removed; a mirror table
//! applies them to the row it holds (see `ingest::mirror`). A patch of a
//! field inside a column (`address.city`) or an array truncation is a dead
//! letter: only whole columns can be applied. A patch whose document is
//! whole (a replacement) is read as the full image.
//!
//! The flattened rows are decoded by the JSON decoder against the table's
//! columns (the same rules, types and dead letters as JSON tables).

use serde_json::{Map, Value};

use super::json::{Decoded, DecoderError, JsonDecoder};
use crate::config::{ColumnConfig, EpochUnit, TableConfig};
use crate::source::Record;

/// The change-metadata columns, in table order, with their Delta types.
pub const CDC_COLUMNS: [(&str, &str); 6] = [
    ("cdc_op", "string"),
    ("cdc_ts", "timestamp"),
    ("cdc_position", "string"),
    ("cdc_db", "string"),
    ("cdc_table", "string"),
    ("cdc_tx", "string"),
];

/// The columns a partial update sets or removes, comma-separated (null
/// for a change with a full image).
pub const PATCHED_COLUMN: &str = "cdc_patched";

/// The column of the `before` image (`before_image = true`).
pub const BEFORE_COLUMN: &str = "cdc_before";

/// Mirror tables: the change's place in the source's log as text that
/// sorts in log order (fixed-width numbers), so the position a row was
/// last changed at can be compared with a later mutation's.
pub const ORDER_COLUMN: &str = "cdc_order";

/// Decodes Debezium JSON envelopes for one mutation-log table.
#[derive(Debug, Clone)]
pub struct DebeziumDecoder {
    rows: JsonDecoder,
    before_image: bool,
    mirror: Option<MirrorShape>,
    /// Column name of each declared field (a partial update names columns).
    columns: std::collections::HashMap<String, String>,
    /// Fields of the declared non-nullable columns (a partial update on a
    /// log table must set them).
    required: Vec<String>,
    /// Derived columns by the column they come from (a partial update that
    /// sets the one changes the others).
    derived: std::collections::HashMap<String, Vec<String>>,
}

/// What a mirror table's change events must carry.
#[derive(Debug, Clone)]
pub(crate) struct MirrorShape {
    /// The primary-key columns: every event names them.
    key: Vec<String>,
    /// Declared non-nullable columns: inserts, updates and reads carry them
    /// (a delete may carry the key alone).
    required: Vec<String>,
}

/// The table config the flattened rows are decoded with: the change
/// columns, then the declared image, then `cdc_before`.
pub fn log_table(table: &TableConfig) -> TableConfig {
    let mut columns: Vec<ColumnConfig> = CDC_COLUMNS
        .iter()
        .map(|(name, type_name)| ColumnConfig {
            name: name.to_string(),
            field: None,
            type_name: type_name.to_string(),
            nullable: *name != "cdc_op",
            epoch_unit: EpochUnit::Millis,
        })
        .collect();
    columns.push(ColumnConfig {
        name: PATCHED_COLUMN.to_string(),
        field: None,
        type_name: "string".into(),
        nullable: true,
        epoch_unit: EpochUnit::Auto,
    });
    let mirror = table.mode == crate::config::TableMode::Mirror;
    if mirror {
        columns.push(ColumnConfig {
            name: ORDER_COLUMN.to_string(),
            field: None,
            type_name: "string".into(),
            nullable: true,
            epoch_unit: EpochUnit::Auto,
        });
    }
    columns.extend(table.columns.iter().cloned().map(|mut c| {
        // A delete may carry the key alone; `flatten` checks the others.
        if mirror && !table.primary_key.contains(&c.name) {
            c.nullable = true;
        }
        c
    }));
    if table.before_image {
        let fields: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("{}:{}", c.name, c.type_name))
            .collect();
        columns.push(ColumnConfig {
            name: BEFORE_COLUMN.to_string(),
            field: None,
            type_name: format!("struct<{}>", fields.join(",")),
            nullable: true,
            epoch_unit: EpochUnit::Auto,
        });
    }
    TableConfig {
        columns,
        ..table.clone()
    }
}

impl DebeziumDecoder {
    /// The decoder of `table`'s declared row image.
    pub fn new(table: &TableConfig) -> Result<Self, DecoderError> {
        let mirror =
            (table.mode == crate::config::TableMode::Mirror).then(|| MirrorShape::of(table));
        Ok(Self {
            rows: JsonDecoder::new(&log_table(table))?,
            before_image: table.before_image,
            mirror,
            columns: table
                .columns
                .iter()
                .map(|c| (c.field().to_string(), c.name.clone()))
                .collect(),
            required: table
                .columns
                .iter()
                .filter(|c| !c.nullable)
                .map(|c| c.field().to_string())
                .collect(),
            derived: table.derived.iter().fold(Default::default(), |mut by, d| {
                by.entry(d.from.clone())
                    .or_insert_with(Vec::new)
                    .push(d.name.clone());
                by
            }),
        })
    }

    /// The table's Arrow schema.
    pub fn table_schema(&self) -> arrow::datatypes::SchemaRef {
        self.rows.table_schema()
    }

    /// Decodes `records`: envelopes become rows, tombstones are skipped,
    /// anything else is rejected with the reason.
    pub fn decode(&self, records: &[Record]) -> Decoded {
        let mut flat = Vec::with_capacity(records.len());
        let mut origin = Vec::with_capacity(records.len());
        let mut rejected = Vec::new();
        let mut skipped = Vec::new();
        for (index, record) in records.iter().enumerate() {
            match self.flatten(&record.payload, record.key.as_deref()) {
                Ok(Some(row)) => {
                    flat.push(Record {
                        payload: row.into(),
                        ..record.clone()
                    });
                    origin.push(index);
                }
                Ok(None) => skipped.push(index),
                Err(reason) => rejected.push((index, reason)),
            }
        }
        self.rows.decode(&flat).onto(&origin, rejected, skipped)
    }

    /// The row of one record, `None` for a tombstone.
    fn flatten(&self, payload: &[u8], key: Option<&[u8]>) -> Result<Option<Vec<u8>>, String> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| format!("not a Debezium change event (JSON): {e}"))?;
        // The JSON converter with schemas wraps the envelope.
        let envelope = match value {
            Value::Object(mut o) if o.contains_key("schema") && o.contains_key("payload") => {
                o.remove("payload").unwrap_or(Value::Null)
            }
            other => other,
        };
        let Value::Object(envelope) = envelope else {
            return match envelope {
                Value::Null => Ok(None),
                _ => Err("not a Debezium change event: the value is not an object".into()),
            };
        };
        let op = envelope
            .get("op")
            .and_then(Value::as_str)
            .ok_or("not a Debezium change event: no `op`")?;
        if !matches!(op, "c" | "u" | "d" | "r") {
            return Err(format!(
                "`op` = `{op}`: only c, u, d and r change events become rows (truncate and message events do not)"
            ));
        }
        // MongoDB's images are extended JSON as text.
        let image = |key: &str| -> Result<Option<Map<String, Value>>, String> {
            Ok(super::debezium_patch::document(envelope.get(key), key)?
                .map(|o| plain_json(Value::Object(o))))
        };
        let mut after = image("after")?;
        let before = image("before")?;
        let source = envelope.get("source").cloned().unwrap_or(Value::Null);
        let mut patched = None;
        if op == "u" && after.is_none() {
            match super::debezium_patch::update(&envelope)? {
                Some(super::debezium_patch::Update::Full(document)) => after = Some(document),
                Some(super::debezium_patch::Update::Partial(partial)) => {
                    let connector = source.get("connector").and_then(Value::as_str);
                    let document_key = super::debezium_patch::filter(&envelope)?
                        .or_else(|| key_image(key, connector))
                        .ok_or("a partial update without its document key (no `filter` and no record key)")?;
                    let (row, mut columns) = partial.row(document_key, &self.columns)?;
                    let derived: Vec<String> = columns
                        .iter()
                        .filter_map(|c| self.derived.get(c))
                        .flatten()
                        .cloned()
                        .collect();
                    columns.extend(derived);
                    if self.mirror.is_none() {
                        if let Some(field) = self.required.iter().find(|f| !row.contains_key(*f)) {
                            return Err(format!(
                                "a partial update leaves the required column `{}` unset: declare it nullable to keep MongoDB's partial updates",
                                self.columns.get(field).map_or(field.as_str(), String::as_str)
                            ));
                        }
                    }
                    after = Some(row);
                    patched = Some(columns.join(","));
                }
                None => {}
            }
        }
        let mut row = match (op, &after, &before) {
            ("d", _, Some(before)) => before.clone(),
            ("d", _, None) => {
                key_image(key, source.get("connector").and_then(Value::as_str)).unwrap_or_default()
            }
            (_, Some(after), _) => after.clone(),
            (_, None, _) => return Err(format!("`op` = `{op}` without an `after` image")),
        };
        if let Some(columns) = patched {
            row.insert(PATCHED_COLUMN.into(), Value::String(columns));
        }
        if let Some(shape) = &self.mirror {
            shape.check(op, &row)?;
            if let Some(order) = order(&source) {
                row.insert(ORDER_COLUMN.into(), Value::String(order));
            }
        }
        row.insert("cdc_op".into(), Value::String(op.into()));
        if let Some(ts) = source.get("ts_ms").filter(|v| v.is_number()) {
            row.insert("cdc_ts".into(), ts.clone());
        }
        row.insert("cdc_position".into(), position(&source));
        for (column, key) in [("cdc_db", "db"), ("cdc_table", "table")] {
            let value = source
                .get(key)
                .or_else(|| (key == "table").then(|| source.get("collection")).flatten());
            if let Some(Value::String(text)) = value {
                row.insert(column.into(), Value::String(text.clone()));
            }
        }
        if let Some(Value::String(id)) = envelope.get("transaction").and_then(|t| t.get("id")) {
            row.insert("cdc_tx".into(), Value::String(id.clone()));
        }
        if self.before_image {
            row.insert(
                super::debezium::BEFORE_COLUMN.into(),
                before.map(Value::Object).unwrap_or(Value::Null),
            );
        }
        Ok(Some(
            serde_json::to_vec(&Value::Object(row)).expect("JSON serializes"),
        ))
    }
}

/// Where the change stands in the source's log, as text.
pub(crate) fn position(source: &Value) -> Value {
    let text = |key: &str| {
        source.get(key).and_then(|v| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        })
    };
    let parts: Vec<String> = match source.get("connector").and_then(Value::as_str) {
        Some("mysql") => ["file", "pos", "row"]
            .iter()
            .filter_map(|k| text(k).map(|v| format!("{k}={v}")))
            .collect(),
        Some("mongodb") => ["ord", "ts_ms"]
            .iter()
            .filter_map(|k| text(k).map(|v| format!("{k}={v}")))
            .collect(),
        _ => ["lsn"]
            .iter()
            .filter_map(|k| text(k).map(|v| format!("{k}={v}")))
            .collect(),
    };
    if parts.is_empty() {
        Value::Null
    } else {
        Value::String(parts.join(","))
    }
}

impl MirrorShape {
    /// What `table`'s events must carry: its primary key (by record field)
    /// and its declared non-nullable columns.
    pub(crate) fn of(table: &TableConfig) -> Self {
        Self {
            key: table
                .primary_key
                .iter()
                .map(|name| {
                    let column = table.columns.iter().find(|c| &c.name == name);
                    column
                        .map_or(name.as_str(), ColumnConfig::field)
                        .to_string()
                })
                .collect(),
            required: table
                .columns
                .iter()
                .filter(|c| !c.nullable && !table.primary_key.contains(&c.name))
                .map(|c| c.field().to_string())
                .collect(),
        }
    }

    /// Refuses an event whose image lacks the key, or (not a delete) a
    /// required column.
    pub(crate) fn check(&self, op: &str, row: &Map<String, Value>) -> Result<(), String> {
        let image = if op == "d" { "before" } else { "after" };
        let missing = |name: &String| row.get(name).is_none_or(Value::is_null);
        let partial = row.contains_key(PATCHED_COLUMN);
        if let Some(name) = self.key.iter().find(|n| missing(n)) {
            if partial {
                return Err(format!(
                    "a partial update carries only the document key (`filter` or the record key), not the primary key column `{name}`: key the mirror by `_id`, or capture full documents"
                ));
            }
            return Err(format!(
                "the primary key column `{name}` is missing from the `{image}` image"
            ));
        }
        if partial {
            if let Some(name) = self
                .required
                .iter()
                .find(|n| row.get(*n) == Some(&Value::Null))
            {
                return Err(format!(
                    "the partial update removes the required column `{name}`"
                ));
            }
        }
        // A partial update carries the fields it sets; the row it applies to has the rest.
        if op != "d" && !row.contains_key(PATCHED_COLUMN) {
            if let Some(name) = self.required.iter().find(|n| missing(n)) {
                return Err(format!(
                    "the required column `{name}` is missing from the `after` image"
                ));
            }
        }
        Ok(())
    }
}

/// The change's place in the source's log, as text that sorts in log
/// order; `None` when the source block has no position.
///
/// PostgreSQL: `sequence` (the last commit's LSN, then the change's own:
/// changes stream in commit order, so the pair orders them even when
/// transactions interleave), else `lsn` alone. MySQL: binlog file, `pos`,
/// `row`. MongoDB: the oplog time (`ts_ms`), then `ord`.
pub(crate) fn order(source: &Value) -> Option<String> {
    let number = |value: Option<&Value>| -> Option<u64> {
        match value? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    };
    match source.get("connector").and_then(Value::as_str) {
        Some("mysql") => {
            let file = source.get("file")?.as_str()?;
            let pos = number(source.get("pos"))?;
            let row = number(source.get("row")).unwrap_or(0);
            Some(format!("{file}/{pos:020}/{row:010}"))
        }
        Some("mongodb") => {
            let ts = number(source.get("ts_ms"))?;
            let ord = number(source.get("ord")).unwrap_or(0);
            Some(format!("{ts:020}/{ord:010}"))
        }
        _ => {
            let sequence: Option<Vec<Value>> = source
                .get("sequence")
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str(s).ok());
            let lsn = number(source.get("lsn"));
            match sequence.as_deref() {
                Some([commit, change]) => {
                    let commit = number(Some(commit)).unwrap_or(0);
                    let change = number(Some(change)).or(lsn)?;
                    Some(format!("{commit:020}/{change:020}"))
                }
                _ => lsn.map(|lsn| format!("{:020}/{lsn:020}", 0)),
            }
        }
    }
}

/// A delete's key columns from the Kafka record key, for an event without
/// a `before` image (MongoDB's by default): the key document's fields, or
/// for MongoDB its `id` (the document key as extended-JSON text) as `_id`.
pub(crate) fn key_image(key: Option<&[u8]>, connector: Option<&str>) -> Option<Map<String, Value>> {
    let value: Value = serde_json::from_slice(key?).ok()?;
    let value = match value {
        Value::Object(mut o) if o.contains_key("schema") && o.contains_key("payload") => {
            o.remove("payload")?
        }
        other => other,
    };
    let Value::Object(fields) = value else {
        return None;
    };
    if connector != Some("mongodb") {
        return Some(plain_json(Value::Object(fields)));
    }
    let id = match fields.get("id")? {
        Value::String(text) => {
            serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.clone()))
        }
        other => other.clone(),
    };
    Some(Map::from_iter([("_id".to_string(), extended(id))]))
}

/// MongoDB extended JSON as plain JSON values: `{"$oid": h}` is `h`,
/// `{"$date": …}` epoch milliseconds, `{"$numberLong": "7"}` and the other
/// number wrappers numbers; anything else unchanged, recursively.
pub(crate) fn plain_json(value: Value) -> Map<String, Value> {
    match extended(value) {
        Value::Object(o) => o,
        _ => Map::new(),
    }
}

fn extended(value: Value) -> Value {
    match value {
        Value::Object(o) if o.len() == 1 => {
            let (key, inner) = o.iter().next().expect("one entry");
            match (key.as_str(), inner) {
                ("$oid", Value::String(hex)) => Value::String(hex.clone()),
                ("$date", Value::Number(ms)) => Value::Number(ms.clone()),
                ("$date", Value::String(text)) => Value::String(text.clone()),
                ("$date", Value::Object(_)) => extended(inner.clone()),
                ("$numberLong" | "$numberInt", Value::String(n)) => n
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::String(n.clone())),
                ("$numberDouble" | "$numberDecimal", Value::String(n)) => n
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or_else(|| Value::String(n.clone())),
                _ => Value::Object(o.into_iter().map(|(k, v)| (k, extended(v))).collect()),
            }
        }
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, extended(v))).collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(extended).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_refuses_partial_updates_it_cannot_apply_with_the_reason() {
        let shape = MirrorShape {
            key: vec!["_id".into()],
            required: vec!["name".into()],
        };
        let row = |text: &str| -> Map<String, Value> { serde_json::from_str(text).unwrap() };
        // A whole image may not lack a required column; a partial one may.
        assert!(shape.check("u", &row(r#"{"_id": "a"}"#)).is_err());
        assert!(shape
            .check("u", &row(r#"{"_id": "a", "cdc_patched": "email"}"#))
            .is_ok());
        let removed = shape
            .check(
                "u",
                &row(r#"{"_id": "a", "name": null, "cdc_patched": "name"}"#),
            )
            .unwrap_err();
        assert!(
            removed.contains("removes the required column `name`"),
            "{removed}"
        );
        let keyed = MirrorShape {
            key: vec!["sku".into()],
            required: Vec::new(),
        };
        let error = keyed
            .check("u", &row(r#"{"_id": "a", "cdc_patched": "email"}"#))
            .unwrap_err();
        assert!(error.contains("carries only the document key"), "{error}");
    }

    #[test]
    fn a_partial_update_names_the_derived_columns_of_what_it_sets() {
        let config = crate::config::Config::parse(
            r#"
[lake]
root = "/tmp/unused"
[[sources]]
kind = "file"
name = "s"
path = "/tmp/unused.ndjson"
format = "debezium"
[[tables]]
name = "people"
source = "s"
key = "id"
mode = "mirror"
primary_key = ["id"]
columns = [
  { name = "id", field = "_id", type = "string", nullable = false },
  { name = "since", type = "timestamp", epoch_unit = "millis" },
]
derived = [{ name = "day", from = "since", transform = "date" }]
"#,
            "test",
        )
        .unwrap();
        let decoder = DebeziumDecoder::new(&config.tables[0]).unwrap();
        let payload = serde_json::json!({
            "op": "u", "after": null,
            "patch": r#"{"$set": {"since": {"$date": 1700000000000}}}"#,
            "filter": r#"{"_id": "a"}"#,
            "source": {"connector": "mongodb", "ts_ms": 1, "ord": 1},
        })
        .to_string();
        let record = crate::decode::json::tests::record(0, &payload);
        let decoded = decoder.decode(&[record]);
        assert!(decoded.rejected.is_empty(), "{:?}", decoded.rejected);
        let batch = decoded.batch.unwrap();
        let patched = batch
            .column_by_name(PATCHED_COLUMN)
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .value(0)
            .to_string();
        assert_eq!(patched, "since,day");
    }

    #[test]
    fn extended_json_reads_as_plain_values() {
        let doc: Value = serde_json::from_str(
            r#"{"_id": {"$oid": "5f1a"}, "at": {"$date": 1700000000000},
                "n": {"$numberLong": "42"}, "price": {"$numberDecimal": "9.5"},
                "tags": [{"$numberInt": "1"}], "nested": {"when": {"$date": {"$numberLong": "5"}}}}"#,
        )
        .unwrap();
        let plain = plain_json(doc);
        assert_eq!(plain["_id"], "5f1a");
        assert_eq!(plain["at"], 1_700_000_000_000i64);
        assert_eq!(plain["n"], 42);
        assert_eq!(plain["price"], 9.5);
        assert_eq!(plain["tags"][0], 1);
        assert_eq!(plain["nested"]["when"], 5);
    }

    #[test]
    fn positions_name_each_connector_s_coordinates() {
        let pg: Value = serde_json::json!({"connector": "postgresql", "lsn": 24023128});
        assert_eq!(position(&pg), "lsn=24023128");
        let mysql: Value = serde_json::json!({"connector": "mysql", "file": "mysql-bin.000003", "pos": 154, "row": 0});
        assert_eq!(position(&mysql), "file=mysql-bin.000003,pos=154,row=0");
        let mongo: Value =
            serde_json::json!({"connector": "mongodb", "ord": 1, "ts_ms": 1558965508000i64});
        assert_eq!(position(&mongo), "ord=1,ts_ms=1558965508000");
    }

    #[test]
    fn a_delete_without_before_takes_its_key_from_the_record_key() {
        let mongo = key_image(Some(br#"{"id": "{\"$oid\": \"5d28\"}"}"#), Some("mongodb")).unwrap();
        assert_eq!(mongo["_id"], "5d28");
        let wrapped = br#"{"schema": {}, "payload": {"id": 1004}}"#;
        assert_eq!(key_image(Some(wrapped), Some("mysql")).unwrap()["id"], 1004);
        assert!(key_image(Some(b"not json"), Some("mysql")).is_none());
        assert!(key_image(None, Some("mongodb")).is_none());
    }

    #[test]
    fn orders_sort_in_log_order() {
        let pg = |sequence: &str, lsn: u64| {
            order(&serde_json::json!({"connector": "postgresql", "sequence": sequence, "lsn": lsn}))
                .unwrap()
        };
        // A transaction that began first but committed later comes after.
        let early_change_late_commit = pg(r#"["500","120"]"#, 120);
        let late_change_early_commit = pg(r#"["400","450"]"#, 450);
        assert!(late_change_early_commit < early_change_late_commit);
        assert!(pg(r#"[null,"100"]"#, 100) < pg(r#"["100","101"]"#, 101));
        let mysql = |file: &str, pos: u64, row: u64| {
            order(&serde_json::json!({"connector": "mysql", "file": file, "pos": pos, "row": row}))
                .unwrap()
        };
        assert!(mysql("mysql-bin.000003", 9000, 0) < mysql("mysql-bin.000004", 4, 0));
        assert!(mysql("mysql-bin.000003", 484, 0) < mysql("mysql-bin.000003", 484, 1));
        let mongo = |ts: u64, ord: u64| {
            order(&serde_json::json!({"connector": "mongodb", "ts_ms": ts, "ord": ord})).unwrap()
        };
        assert!(mongo(1000, 31) < mongo(2000, 2));
        assert!(mongo(2000, 2) < mongo(2000, 10));
        assert_eq!(order(&serde_json::json!({})), None);
    }
}
