//! What `check` reads from a table's `_delta_log` directly: the last
//! checkpoint (its kind and whether it carries struct statistics) and the
//! JSON commit bytes written since.

use std::sync::Arc;

use deltalake::ObjectStore;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt as _;

/// Facts about the log.
#[derive(Debug, Default)]
pub struct LogFacts {
    /// The last checkpoint's version, if there is one.
    pub checkpoint_version: Option<i64>,
    /// Whether it is a v2 checkpoint (named by a UUID, or so described).
    pub v2_checkpoint: bool,
    /// Whether its `add` actions carry `stats_parsed`.
    pub struct_stats: bool,
    /// Bytes of JSON commits after it (all of them without one).
    pub json_bytes_since_checkpoint: u64,
}

/// The version a log file name starts with.
fn version_of(name: &str) -> Option<i64> {
    name.get(..20)
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse().ok())
}

/// Reads the facts from the table's store (rooted at the table).
pub async fn read(store: &Arc<dyn ObjectStore>) -> Result<LogFacts, String> {
    let mut facts = LogFacts::default();
    let pointer = Path::from("_delta_log/_last_checkpoint");
    let described: Option<serde_json::Value> = match store.get(&pointer).await {
        Ok(found) => {
            let bytes = found.bytes().await.map_err(|e| e.to_string())?;
            Some(serde_json::from_slice(&bytes).map_err(|e| format!("{pointer}: {e}"))?)
        }
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.to_string()),
    };
    let listed: Vec<_> = store
        .list(Some(&Path::from("_delta_log")))
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let mut checkpoints: Vec<(i64, Path, u64, String)> = Vec::new();
    let mut commits: Vec<(i64, u64)> = Vec::new();
    for meta in &listed {
        let Some(name) = meta.location.filename() else {
            continue;
        };
        let Some(version) = version_of(name) else {
            continue;
        };
        let rest = &name[20..];
        if rest == ".json" {
            commits.push((version, meta.size));
        } else if let Some(kind) = rest.strip_prefix(".checkpoint.") {
            checkpoints.push((version, meta.location.clone(), meta.size, kind.to_string()));
        }
    }
    let last = described
        .as_ref()
        .and_then(|d| d["version"].as_i64())
        .or_else(|| checkpoints.iter().map(|c| c.0).max());
    facts.checkpoint_version = last;
    if let Some(version) = last {
        let mine: Vec<_> = checkpoints.iter().filter(|c| c.0 == version).collect();
        // Classic: `N.checkpoint.parquet` or `N.checkpoint.<part>.<parts>.parquet`;
        // v2: `N.checkpoint.<uuid>.json|parquet`.
        facts.v2_checkpoint = described
            .as_ref()
            .is_some_and(|d| !d["v2Checkpoint"].is_null())
            || mine.iter().any(|c| {
                let stem = c.3.trim_end_matches(".parquet").trim_end_matches(".json");
                stem.len() == 36 && stem.matches('-').count() == 4
            });
        if let Some((_, path, size, _)) = mine
            .iter()
            .find(|c| c.3 == "parquet" || c.3.ends_with(".parquet"))
        {
            facts.struct_stats = has_struct_stats(store.clone(), path, *size).await?;
        }
    }
    facts.json_bytes_since_checkpoint = commits
        .iter()
        .filter(|(v, _)| last.is_none_or(|l| *v > l))
        .map(|(_, size)| size)
        .sum();
    Ok(facts)
}

async fn has_struct_stats(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    size: u64,
) -> Result<bool, String> {
    #[allow(deprecated)] // the suggested replacement needs a hand-written AsyncFileReader
    let reader =
        deltalake::parquet::arrow::async_reader::ParquetObjectReader::new(store, path.clone())
            .with_file_size(size);
    let builder =
        deltalake::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
    let schema = builder.schema();
    Ok(match schema.field_with_name("add").map(|f| f.data_type()) {
        Ok(arrow::datatypes::DataType::Struct(fields)) => fields.find("stats_parsed").is_some(),
        _ => false,
    })
}
