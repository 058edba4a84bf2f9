//! Reading a lake into a [`Catalog`]: listing its tables and describing
//! each from its Delta log, statistics and history, and the erasure ledger.

use std::collections::{BTreeMap, BTreeSet};

use object_store::path::Path as StorePath;
use object_store::ObjectStoreExt as _;
use serde_json::Value;
use url::Url;

use super::{
    time_of, Administrative, Catalog, Column, Descriptive, OpenErasure, Structural, TableEntry,
    Unreadable,
};
use crate::config::Config;
use crate::erase::ledger::{Ledger, State, LEDGER_DIR};
use crate::maintain::zorder::COLUMNS_TAG;
use crate::table::about::{self, KIND};
use crate::table::lineage::COMMIT_INFO_KEY;
use crate::table::{self, TableError};

/// Reads every table of `config`'s lake, as of `now_ms`.
pub async fn read(
    config: &Config,
    small_file_bytes: u64,
    now_ms: i64,
) -> Result<Catalog, TableError> {
    let root = &config.lake.root;
    let options = &config.lake.storage_options;
    let mut locations: BTreeMap<String, Url> = table::list_tables(root, options).await?;
    let mut configured: BTreeSet<String> = BTreeSet::new();
    for table_config in &config.tables {
        let data = match &table_config.uri {
            Some(uri) => table::resolve_location(uri)?,
            None => table::resolve_location(&table::child_location(root, &table_config.name))?,
        };
        let dead_name = format!("{}_dead_letters", table_config.name);
        let dead = match &table_config.dead_letter_uri {
            Some(uri) => table::resolve_location(uri)?,
            None => table::resolve_location(&table::child_location(root, &dead_name))?,
        };
        configured.insert(table_config.name.clone());
        configured.insert(dead_name.clone());
        // Tables outside the root, once they exist.
        for (name, url) in [(table_config.name.clone(), data), (dead_name, dead)] {
            if !locations.contains_key(&name) && table::open(&url, options).await.is_ok() {
                locations.insert(name, url);
            }
        }
    }
    let open_erasures = open_erasures(root, options, now_ms).await;
    let mut tables = Vec::new();
    let mut unreadable = Vec::new();
    for (name, url) in locations {
        match describe(config, &name, &url, small_file_bytes, now_ms).await {
            Ok(mut entry) => {
                entry.configured = configured.contains(&name);
                entry.administrative.open_erasures =
                    open_erasures.get(&name).cloned().unwrap_or_default();
                tables.push(entry);
            }
            Err(error) => unreadable.push(Unreadable {
                name,
                url: url.to_string(),
                reason: error.to_string(),
            }),
        }
    }
    relate(&mut tables);
    Ok(Catalog {
        root: root.clone(),
        read_at: time_of(now_ms).unwrap_or_default(),
        tables,
        unreadable,
        refused_topics: super::refused::list(root, options).await,
    })
}

/// Describes the table `name` at `url`.
async fn describe(
    config: &Config,
    name: &str,
    url: &Url,
    small_file_bytes: u64,
    now_ms: i64,
) -> Result<TableEntry, TableError> {
    let options = &config.lake.storage_options;
    let table = table::open(url, options).await?;
    let history = crate::status::history(url, &table).await?;
    let status = crate::status::status_of(url, &table, &history, small_file_bytes).await?;
    let failed = |source| TableError::Delta {
        url: url.to_string(),
        source: Box::new(source),
    };
    let snapshot = table.snapshot().map_err(failed)?;
    let metadata = serde_json::to_value(snapshot.metadata()).unwrap_or_default();
    let property = |key: &str| metadata["configuration"][key].as_str().map(str::to_string);
    let list = |key: &str| -> Vec<String> {
        property(key)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let schema: Value = metadata["schemaString"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut columns = Vec::new();
    flatten(&schema, "", &mut columns);

    let kind = property(KIND).unwrap_or_else(|| {
        if name == LEDGER_DIR {
            "erasure_ledger".into()
        } else if name.ends_with("_dead_letters") {
            "dead_letters".into()
        } else {
            "data".into()
        }
    });
    let dead_letters_of = (kind == "dead_letters").then(|| {
        property(about::FOR_TABLE)
            .unwrap_or_else(|| name.trim_end_matches("_dead_letters").to_string())
    });
    let configured = config.tables.iter().find(|t| t.name == name);
    let mut sources = list(about::SOURCES);
    if sources.is_empty() {
        if let Some(t) = configured {
            sources = about::sources(config.sources_for(t))
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
    }
    let mut zorder_columns = list(about::ZORDER);
    if zorder_columns.is_empty() {
        if let Some(t) = configured {
            zorder_columns = t.zorder_columns();
        }
    }

    // Event times and Z-order coverage from the live files.
    let event_time_column = schema["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["type"] == "timestamp" || f["type"] == "timestamp_ntz")
        .and_then(|f| f["name"].as_str().map(str::to_string));
    let (mut first, mut last): (Option<i64>, Option<i64>) = (None, None);
    let (mut ordered_bytes, mut all_bytes) = (0u64, 0u64);
    let zorder_tag = zorder_columns.join(",");
    let live = crate::maintain::files::live_files_by_partition(&table, &[]).map_err(failed)?;
    for file in live.values().flatten() {
        all_bytes += file.size;
        let ordered = file.tags.get(COLUMNS_TAG).cloned().flatten();
        if !zorder_tag.is_empty() && ordered.as_deref() == Some(zorder_tag.as_str()) {
            ordered_bytes += file.size;
        }
        if let (Some(column), Some(stats)) = (&event_time_column, &file.stats) {
            let stats: Value = serde_json::from_str(stats).unwrap_or_default();
            let at = |which: &str| {
                stats[which][column.as_str()]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_millis())
            };
            if let Some(min) = at("minValues") {
                first = Some(first.map_or(min, |f| f.min(min)));
            }
            if let Some(max) = at("maxValues") {
                last = Some(last.map_or(max, |l| l.max(max)));
            }
        }
    }

    // Maintenance and activity from the retained history.
    let day_ago = now_ms - 24 * 3600 * 1000;
    let mut administrative = Administrative {
        version: status.version,
        rows: status.rows,
        hidden_rows: status.hidden_rows,
        bytes: status.bytes,
        files: status.files,
        small_files: status.small_files,
        event_time_column,
        first_event: first.and_then(time_of),
        last_event: last.and_then(time_of),
        freshness_seconds: last.map(|l| (now_ms - l) / 1000),
        last_commit: status.last_commit_time.clone(),
        commits_last_24h: history
            .iter()
            .filter(|c| c.timestamp.is_some_and(|t| t >= day_ago))
            .count() as u64,
        complete: status
            .partitions
            .iter()
            .all(|p| p.contiguous && p.counts_add_up),
        dead_lettered: status.partitions.iter().map(|p| p.dead_lettered).sum(),
        suppressed: status.partitions.iter().map(|p| p.suppressed).sum(),
        partitions: status.partitions.clone(),
        ..Default::default()
    };
    for commit in &history {
        let at = commit.timestamp.and_then(time_of);
        let sluice_kind = commit
            .info
            .get(COMMIT_INFO_KEY)
            .and_then(|v| v["kind"].as_str());
        match (commit.operation.as_deref(), sluice_kind) {
            (_, Some("compact")) => administrative.last_compaction = at,
            (_, Some("zorder")) => administrative.last_zorder = at,
            (Some("OPTIMIZE"), None) => administrative.last_compaction = at,
            (Some("VACUUM END"), _) => administrative.last_vacuum = at,
            _ => {}
        }
    }
    administrative.last_checkpoint = last_checkpoint(&table).await;

    let mut schema_versions: Vec<String> = status
        .schemas
        .iter()
        .map(|(id, label)| format!("{label} (id {id})"))
        .collect();
    schema_versions.sort();
    Ok(TableEntry {
        name: name.to_string(),
        url: url.to_string(),
        kind,
        configured: false,
        descriptive: Descriptive {
            description: metadata["description"].as_str().map(str::to_string),
            owner: property(about::OWNER),
            tags: list(about::TAGS),
            schema_source: property(about::SCHEMA),
            schema_versions,
            columns,
        },
        structural: Structural {
            sources,
            partition_columns: metadata["partitionColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            zordered_share: (!zorder_columns.is_empty() && all_bytes > 0)
                .then(|| ordered_bytes as f64 / all_bytes as f64),
            zorder_columns,
            key: property(crate::maintain::KEY_PROPERTY),
            primary_key: list(about::PRIMARY_KEY),
            template: property(about::TEMPLATE),
            convention: list(about::CONVENTION)
                .into_iter()
                .filter_map(|f| {
                    f.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect(),
            dead_letters_of,
            related: Vec::new(),
        },
        administrative,
    })
}

/// The version in `_delta_log/_last_checkpoint`, if any.
async fn last_checkpoint(table: &deltalake::DeltaTable) -> Option<i64> {
    let store = table.log_store().object_store(None);
    let bytes = store
        .get(&StorePath::from("_delta_log/_last_checkpoint"))
        .await
        .ok()?
        .bytes()
        .await
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["version"].as_i64()
}

/// Columns of a Delta schema (JSON), nested struct fields by dotted path.
fn flatten(schema: &Value, prefix: &str, out: &mut Vec<Column>) {
    for field in schema["fields"].as_array().into_iter().flatten() {
        let name = format!("{prefix}{}", field["name"].as_str().unwrap_or("?"));
        out.push(Column {
            name: name.clone(),
            data_type: type_name(&field["type"]),
            nullable: field["nullable"].as_bool().unwrap_or(true),
            comment: field["metadata"]["comment"].as_str().map(str::to_string),
        });
        if field["type"]["type"] == "struct" {
            flatten(&field["type"], &format!("{name}."), out);
        }
    }
}

/// A Delta type (JSON) as Spark writes it: `string`, `array<long>`,
/// `struct<lat:double>`, `map<string,long>`.
fn type_name(ty: &Value) -> String {
    match ty {
        Value::String(name) => name.clone(),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("array") => format!("array<{}>", type_name(&ty["elementType"])),
            Some("map") => format!(
                "map<{},{}>",
                type_name(&ty["keyType"]),
                type_name(&ty["valueType"])
            ),
            Some("struct") => format!(
                "struct<{}>",
                ty["fields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| format!(
                        "{}:{}",
                        f["name"].as_str().unwrap_or("?"),
                        type_name(&f["type"])
                    ))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            _ => ty.to_string(),
        },
        other => other.to_string(),
    }
}

/// Erasure requests not purged yet, per target table.
async fn open_erasures(
    root: &str,
    options: &BTreeMap<String, String>,
    now_ms: i64,
) -> BTreeMap<String, Vec<OpenErasure>> {
    let mut open: BTreeMap<String, Vec<OpenErasure>> = BTreeMap::new();
    let Ok(Some(mut ledger)) = Ledger::open(root, options).await else {
        return open;
    };
    let Ok(requests) = ledger.requests().await else {
        return open;
    };
    for request in requests {
        if request.state() >= State::Purged {
            continue;
        }
        for (table, progress) in &request.tables {
            if progress.purged.is_some() {
                continue;
            }
            let state = if progress.deletions.is_empty() {
                "requested"
            } else {
                "deleted"
            };
            open.entry(table.clone()).or_default().push(OpenErasure {
                id: request.id.clone(),
                state: state.into(),
                deadline: time_of(request.deadline_ms).unwrap_or_default(),
                overdue: request.deadline_ms < now_ms,
            });
        }
    }
    open
}

/// Fills each table's related tables: a data table and its dead letters,
/// and tables that share a source or a topic family (a topic name without
/// its last `.` part: `prod.rides.events.ride.RideEvent` and
/// `prod.rides.events.ride.RideRated` are one family).
fn relate(tables: &mut [TableEntry]) {
    let family = |source: &str| -> Option<String> {
        let topic = source.strip_prefix("kafka:")?;
        topic.rsplit_once('.').map(|(f, _)| f.to_string())
    };
    let keys: Vec<(String, BTreeSet<String>)> = tables
        .iter()
        .map(|t| {
            let mut keys: BTreeSet<String> = t.structural.sources.iter().cloned().collect();
            keys.extend(t.structural.sources.iter().filter_map(|s| family(s)));
            (t.name.clone(), keys)
        })
        .collect();
    for table in tables.iter_mut() {
        let mine = &keys
            .iter()
            .find(|(n, _)| n == &table.name)
            .expect("listed")
            .1;
        let mut related: BTreeSet<String> = keys
            .iter()
            .filter(|(name, theirs)| name != &table.name && !mine.is_disjoint(theirs))
            .map(|(name, _)| name.clone())
            .collect();
        if let Some(data) = &table.structural.dead_letters_of {
            related.insert(data.clone());
        }
        let dead = format!("{}_dead_letters", table.name);
        if keys.iter().any(|(n, _)| n == &dead) {
            related.insert(dead);
        }
        table.structural.related = related.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_columns_are_listed_by_path_with_spark_type_names() {
        let schema = serde_json::json!({"type": "struct", "fields": [
            {"name": "id", "type": "string", "nullable": false, "metadata": {"comment": "the ride"}},
            {"name": "pickup", "type": {"type": "struct", "fields": [
                {"name": "lat", "type": "double", "nullable": true, "metadata": {}}]},
                "nullable": true, "metadata": {}},
            {"name": "tags", "type": {"type": "array", "elementType": "string", "containsNull": true},
                "nullable": true, "metadata": {}},
            {"name": "attrs", "type": {"type": "map", "keyType": "string", "valueType": "long",
                "valueContainsNull": true}, "nullable": true, "metadata": {}}
        ]});
        let mut columns = Vec::new();
        flatten(&schema, "", &mut columns);
        let listed: Vec<(&str, &str)> = columns
            .iter()
            .map(|c| (c.name.as_str(), c.data_type.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("id", "string"),
                ("pickup", "struct<lat:double>"),
                ("pickup.lat", "double"),
                ("tags", "array<string>"),
                ("attrs", "map<string,long>"),
            ]
        );
        assert_eq!(columns[0].comment.as_deref(), Some("the ride"));
        assert!(!columns[0].nullable);
    }
}
