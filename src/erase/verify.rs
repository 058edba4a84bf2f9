//! Verification: proof that a key is gone from a table, rows and bytes.
//!
//! Two checks, per target table:
//! - **Live rows**: every live file whose statistics admit the key (with
//!   `full`: every live file) is read, and no row may hold it.
//! - **Every object** under the table root (data files live or not, commits,
//!   checkpoints, `_last_checkpoint`, leases) is scanned. Transaction-log
//!   JSON is parsed and walked, including the `stats` strings nested in it:
//!   a field named like the key column holding the value, or (string keys)
//!   any string equal to it, is a hit. Parquet objects other than live data
//!   files (removed files not yet vacuumed, orphans, checkpoints; with
//!   `full`, live files too) are decoded and walked column by column, nested
//!   `stats_parsed` structs included. For string keys of at least
//!   [`RAW_MIN_LEN`] bytes every object's raw bytes are also searched
//!   (compressed pages hide values, but footers and JSON do not); shorter
//!   values occur by chance in binary data, so they rely on the decoded scans.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BinaryArray, StringArray};
use arrow::datatypes::DataType;
#[allow(deprecated)] // the suggested replacement needs a hand-written AsyncFileReader
use deltalake::parquet::arrow::async_reader::{
    ParquetObjectReader, ParquetRecordBatchStreamBuilder,
};
use deltalake::ObjectStore;
use futures::TryStreamExt;
use object_store::ObjectStoreExt as _;
use serde::Serialize;

use super::keys::{KeyKind, KeySet, KeyValue, MatchSource};
use super::{EraseError, TableTarget};
use crate::maintain::files::{live_files_by_partition, with_partition_columns};

/// String keys shorter than this are not searched for in raw bytes.
pub const RAW_MIN_LEN: usize = 6;

/// One place a key was found.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// Object path under the table root.
    pub object: String,
    /// Where in it.
    pub found: String,
}

/// The result of verifying one key against one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableVerification {
    /// The table.
    pub table: String,
    /// Live files read.
    pub live_files_checked: u64,
    /// Live rows holding the key.
    pub live_rows_found: u64,
    /// Objects scanned under the table root.
    pub objects_scanned: u64,
    /// Bytes scanned.
    pub bytes_scanned: u64,
    /// Where the key was found.
    pub hits: Vec<Hit>,
    /// No live row and no object holds the key.
    pub passed: bool,
}

/// What to look for: a key column and one of its values.
pub(crate) struct Needle {
    /// The key column.
    pub column: String,
    /// The value.
    pub value: KeyValue,
}

/// Verifies that `target` holds `value` of `column` nowhere; see the module docs.
pub async fn verify_table(
    target: &TableTarget,
    column: &str,
    value_text: &str,
    full: bool,
) -> Result<TableVerification, EraseError> {
    let kind = target.key_kind(column).await.map_err(EraseError::Invalid)?;
    let value = KeyValue::parse(value_text, kind).map_err(EraseError::Invalid)?;
    let mut report = TableVerification {
        table: target.name.clone(),
        ..Default::default()
    };
    let table = match target.open().await {
        Ok(table) => table,
        Err(EraseError::Table(crate::table::TableError::NotATable(_))) => {
            // Never created (no record was ever rejected): nothing to hold the key.
            report.passed = true;
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    let needle = Needle {
        column: column.to_string(),
        value,
    };
    let live_paths = check_live_rows(&table, target.source, &needle, full, &mut report).await?;
    let store = table.object_store();
    let objects: Vec<_> = store.list(None).try_collect().await?;
    for meta in objects {
        let path = meta.location.to_string();
        if path.ends_with(".parquet") && live_paths.contains(&path) && !full {
            // Counted as objects, checked row by row above.
            report.objects_scanned += 1;
            report.bytes_scanned += meta.size;
            if let KeyValue::Str(text) = &needle.value {
                let bytes = store.get(&meta.location).await?.bytes().await?;
                if text.len() >= RAW_MIN_LEN && contains(&bytes, text.as_bytes()) {
                    report.hits.push(Hit {
                        object: path,
                        found: "raw bytes".into(),
                    });
                }
            }
            continue;
        }
        scan_object(&store, &meta, &needle, &mut report).await?;
    }
    report.passed = report.hits.is_empty() && report.live_rows_found == 0;
    Ok(report)
}

/// Reads the live files that may hold `needle` (with `full`: all of them)
/// and counts its rows into `report`; returns every live file's path.
pub(crate) async fn check_live_rows(
    table: &deltalake::DeltaTable,
    source: MatchSource,
    needle: &Needle,
    full: bool,
    report: &mut TableVerification,
) -> Result<std::collections::HashSet<String>, EraseError> {
    let schema = table.snapshot()?.snapshot().arrow_schema();
    let kind = match needle.value {
        KeyValue::Int(_) => KeyKind::Int,
        KeyValue::Str(_) => KeyKind::Str,
    };
    let mut set = KeySet::new(&needle.column, kind);
    set.insert(needle.value.clone());
    let store = table.object_store();
    let live: Vec<_> = live_files_by_partition(table, &[])?
        .into_values()
        .flatten()
        .collect();
    let live_paths = live.iter().map(|f| f.location.to_string()).collect();
    for file in &live {
        let stats: serde_json::Value = file
            .stats
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let admitted = source == MatchSource::Payload
            || !set
                .in_range(
                    stats
                        .get("minValues")
                        .and_then(|m| super::find::stat_at(m, &needle.column)),
                    stats
                        .get("maxValues")
                        .and_then(|m| super::find::stat_at(m, &needle.column)),
                )
                .is_empty();
        if !full && !admitted {
            continue;
        }
        report.live_files_checked += 1;
        let found = count_live_rows(store.clone(), file, &schema, &set, source).await?;
        if found > 0 {
            report.live_rows_found += found;
            report.hits.push(Hit {
                object: file.location.to_string(),
                found: format!("{found} live row(s)"),
            });
        }
    }
    Ok(live_paths)
}

/// Reads one object and records into `report` whether it holds `needle`.
pub(crate) async fn scan_object(
    store: &Arc<dyn ObjectStore>,
    meta: &object_store::ObjectMeta,
    needle: &Needle,
    report: &mut TableVerification,
) -> Result<(), EraseError> {
    report.objects_scanned += 1;
    report.bytes_scanned += meta.size;
    let bytes = store.get(&meta.location).await?.bytes().await?;
    if let Some(found) = scan_bytes(meta.location.as_ref(), bytes, needle).await? {
        report.hits.push(found);
    }
    Ok(())
}

/// Whether an object's bytes hold `needle`: raw (long string keys), then
/// decoded (Parquet columns, JSON lines).
pub(crate) async fn scan_bytes(
    path: &str,
    bytes: bytes::Bytes,
    needle: &Needle,
) -> Result<Option<Hit>, EraseError> {
    let hit = |found: String| {
        Some(Hit {
            object: path.to_string(),
            found,
        })
    };
    if let KeyValue::Str(text) = &needle.value {
        if text.len() >= RAW_MIN_LEN && contains(&bytes, text.as_bytes()) {
            return Ok(hit("raw bytes".into()));
        }
    }
    let found = if path.ends_with(".parquet") {
        scan_parquet(bytes, needle).await?
    } else {
        scan_json_lines(&bytes, needle)
    };
    Ok(found.and_then(hit))
}

async fn count_live_rows(
    store: Arc<dyn ObjectStore>,
    file: &crate::maintain::files::LiveFile,
    schema: &arrow::datatypes::SchemaRef,
    set: &KeySet,
    source: MatchSource,
) -> Result<u64, EraseError> {
    #[allow(deprecated)] // the suggested replacement needs a hand-written AsyncFileReader
    let reader = ParquetObjectReader::new(store, file.location.clone()).with_file_size(file.size);
    let mut stream = ParquetRecordBatchStreamBuilder::new(reader)
        .await?
        .build()?;
    let mut found = 0u64;
    while let Some(batch) = stream.try_next().await? {
        let batch = with_partition_columns(batch, schema, &file.partition)?;
        found += set.matching_rows(&batch, source)?.len() as u64;
    }
    Ok(found)
}

/// Whether `needle` occurs in `haystack`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return false;
    };
    haystack
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == first)
        .any(|(i, _)| haystack[i..].starts_with(needle))
}

/// Walks every line of a JSON-lines object; `None` when the key is absent.
fn scan_json_lines(bytes: &[u8], needle: &Needle) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    for (index, line) in text.lines().enumerate() {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
            if let Some(path) = walk_json(&value, needle, "") {
                return Some(format!("line {}: {path}", index + 1));
            }
        }
    }
    None
}

fn json_equals(value: &serde_json::Value, key: &KeyValue) -> bool {
    match (value, key) {
        (serde_json::Value::Number(n), KeyValue::Int(k)) => n.as_i64() == Some(*k),
        (serde_json::Value::String(s), KeyValue::Str(k)) => s == k,
        (serde_json::Value::String(s), KeyValue::Int(k)) => s == &k.to_string(),
        _ => false,
    }
}

fn walk_json(value: &serde_json::Value, needle: &Needle, at: &str) -> Option<String> {
    match value {
        serde_json::Value::Object(map) => map.iter().find_map(|(name, child)| {
            let here = format!("{at}.{name}");
            if name == &needle.column && json_equals(child, &needle.value) {
                return Some(here);
            }
            walk_json(child, needle, &here)
        }),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| walk_json(v, needle, &format!("{at}[{i}]"))),
        serde_json::Value::String(text) => {
            if matches!(&needle.value, KeyValue::Str(k) if k == text) {
                return Some(at.to_string());
            }
            // `stats` and similar fields hold JSON inside a string.
            if text.starts_with('{') {
                if let Ok(inner) = serde_json::from_str::<serde_json::Value>(text) {
                    return walk_json(&inner, needle, at);
                }
            }
            None
        }
        _ => None,
    }
}

/// Decodes a Parquet object and walks every column; `None` when the key is absent.
async fn scan_parquet(bytes: bytes::Bytes, needle: &Needle) -> Result<Option<String>, EraseError> {
    let reader =
        deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?
            .build()?;
    for batch in reader {
        let batch = batch?;
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            if let Some(found) = walk_array(field.name(), column.as_ref(), needle)? {
                return Ok(Some(format!("column {found}")));
            }
        }
    }
    Ok(None)
}

fn walk_array(
    name: &str,
    array: &dyn Array,
    needle: &Needle,
) -> Result<Option<String>, EraseError> {
    match array.data_type() {
        DataType::Struct(fields) => {
            let array = array.as_struct();
            for (field, child) in fields.iter().zip(array.columns()) {
                if let Some(found) = walk_array(field.name(), child.as_ref(), needle)? {
                    return Ok(Some(format!("{name}.{found}")));
                }
            }
            Ok(None)
        }
        DataType::List(_) => walk_array(name, array.as_list::<i32>().values().as_ref(), needle),
        DataType::LargeList(_) => {
            walk_array(name, array.as_list::<i64>().values().as_ref(), needle)
        }
        DataType::Map(_, _) => {
            let entries = array.as_map().entries();
            walk_array(name, entries, needle)
        }
        DataType::Dictionary(_, value) => {
            let cast = arrow::compute::cast(array, value)?;
            walk_array(name, cast.as_ref(), needle)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let KeyValue::Str(key) = &needle.value else {
                return Ok(None);
            };
            let cast = arrow::compute::cast(array, &DataType::Utf8)?;
            let strings = cast.as_any().downcast_ref::<StringArray>().expect("Utf8");
            let token = serde_json::to_string(key).expect("strings serialize");
            Ok(strings
                .iter()
                .flatten()
                .any(|v| v == key || v.contains(&token))
                .then(|| name.to_string()))
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let KeyValue::Str(key) = &needle.value else {
                return Ok(None);
            };
            let cast = arrow::compute::cast(array, &DataType::Binary)?;
            let blobs = cast.as_any().downcast_ref::<BinaryArray>().expect("Binary");
            Ok(blobs
                .iter()
                .flatten()
                .any(|v| contains(v, key.as_bytes()))
                .then(|| name.to_string()))
        }
        data_type if data_type.is_integer() && name == needle.column => {
            let KeyValue::Int(_) = &needle.value else {
                return Ok(None);
            };
            let mut set = KeySet::new(name, KeyKind::Int);
            set.insert(needle.value.clone());
            Ok((set.matches(array)?.true_count() > 0).then(|| name.to_string()))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_in_nested_stats_json() {
        let needle = Needle {
            column: "user_id".into(),
            value: KeyValue::Int(42),
        };
        let line = r#"{"add":{"path":"x","size":42,"stats":"{\"numRecords\":3,\"minValues\":{\"user_id\":42}}"}}"#;
        assert_eq!(
            scan_json_lines(line.as_bytes(), &needle).as_deref(),
            Some("line 1: .add.stats.minValues.user_id")
        );
        // `size: 42` is not the key column.
        let other = r#"{"add":{"path":"x","size":42,"stats":"{\"minValues\":{\"user_id\":41}}"}}"#;
        assert_eq!(scan_json_lines(other.as_bytes(), &needle), None);
    }

    #[test]
    fn raw_search_finds_substrings() {
        assert!(contains(b"abc user-0042 def", b"user-0042"));
        assert!(!contains(b"abc user-004 def", b"user-0042"));
    }
}
