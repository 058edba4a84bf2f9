//! Delta tables: locations, creation, recorded source positions, Parquet
//! writing and commits.
//!
//! The table is the source of truth for progress (invariant 1): every commit
//! sluice makes carries a Delta `txn` action per source partition it covers,
//! whose `version` is the last position (Kafka offset, file line) included.

pub mod about;
pub mod commit;
pub mod dead_letter;
pub mod deletion_vectors;
pub mod lineage;
#[cfg(unix)]
pub mod local_store;
pub mod names;
pub mod position_memo;
pub mod probe;
pub mod schema;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::datatypes::Schema as ArrowSchema;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::StructType;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

use crate::source::PositionLookup;

/// Errors opening or creating a table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The location is not a usable path or URL.
    #[error("table location `{location}`: {reason}")]
    Location {
        /// The configured location.
        location: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The existing table's schema lacks or retypes a configured column.
    #[error("table {url}: column `{column}` {problem}; the config and the table disagree")]
    SchemaMismatch {
        /// Table URL.
        url: String,
        /// The column.
        column: String,
        /// What differs.
        problem: String,
    },
    /// No Delta table at this location.
    #[error("no Delta table at {0}")]
    NotATable(String),
    /// Any other Delta error, with the table it concerns.
    #[error("table {url}: {source}")]
    Delta {
        /// Table URL.
        url: String,
        /// The delta-rs error.
        source: Box<DeltaTableError>,
    },
}

impl TableError {
    fn delta(url: &Url, source: DeltaTableError) -> Self {
        TableError::Delta {
            url: url.to_string(),
            source: Box::new(source),
        }
    }
}

/// Registers the object stores sluice can write to besides local disk
/// (`s3://`, and S3-compatible stores through an endpoint override; Azure
/// Blob Storage and Data Lake Storage as `az://container/path`,
/// `abfss://container@account.dfs.core.windows.net/path`; Google Cloud
/// Storage as `gs://bucket/path`, `google_base_url` for emulators and
/// private endpoints), and
/// local disk's own ([`local_store`]: listing the log from a version does
/// not stat every log file).
pub fn register_object_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        deltalake::aws::register_handlers(None);
        deltalake::azure::register_handlers(None);
        deltalake::gcp::register_handlers(None);
        #[cfg(unix)]
        deltalake::logstore::object_store_factories().insert(
            Url::parse("file://").expect("valid url"),
            Arc::new(local_store::LocalStoreFactory),
        );
    });
}

/// Checks that the lake root can be listed with its storage options, within
/// 20 seconds: an unreachable endpoint or missing credentials stop startup
/// with an error naming the keys, before anything is written. Then that the
/// store honours create-only writes (a second create of one object must
/// fail): commits, Kinesis position sidecars and leases depend on them, and
/// a store that overwrites instead is refused rather than used unsafely.
pub async fn preflight(
    root: &str,
    storage_options: &BTreeMap<String, String>,
) -> Result<(), TableError> {
    if !root.contains("://") || root.starts_with("file://") {
        return Ok(());
    }
    let problem = |reason: String| {
        TableError::Location {
        location: root.to_string(),
        reason: format!(
            "lake.root is not reachable with lake.storage_options (endpoint, region, credentials): {reason}"
        ),
    }
    };
    Url::parse(root).map_err(|e| problem(e.to_string()))?;
    let store = lake_store(root, storage_options).map_err(|e| problem(e.to_string()))?;
    use futures::StreamExt;
    let listing = async { store.list(None).next().await.transpose() };
    match tokio::time::timeout(std::time::Duration::from_secs(20), listing).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(problem(e.to_string())),
        Err(_) => return Err(problem("no answer within 20s".into())),
    }
    probe::create_only(store.as_ref())
        .await
        .map_err(|reason| TableError::Location {
            location: root.to_string(),
            reason,
        })
}

/// Turns a config location (a local path or a URL) into a table URL,
/// creating local directories as needed.
pub fn resolve_location(location: &str) -> Result<Url, TableError> {
    register_object_stores();
    deltalake::ensure_table_uri(location).map_err(|e| TableError::Location {
        location: location.to_string(),
        reason: e.to_string(),
    })
}

/// `<root>/<name>` for a lake root given as a path or URL.
pub fn child_location(root: &str, name: &str) -> String {
    format!("{}/{name}", root.trim_end_matches('/'))
}

fn options(storage_options: &BTreeMap<String, String>) -> HashMap<String, String> {
    storage_options.clone().into_iter().collect()
}

/// Opens an existing table (at its latest version).
pub async fn open(
    url: &Url,
    storage_options: &BTreeMap<String, String>,
) -> Result<DeltaTable, TableError> {
    register_object_stores();
    let mut table = DeltaTableBuilder::from_url(url.clone())
        .map_err(|e| TableError::delta(url, e))?
        .with_storage_options(options(storage_options))
        .build()
        .map_err(|e| TableError::delta(url, e))?;
    // A table with a checkpoint exists; only without one is the log listed
    // (listing a long history costs more than the load itself).
    let pointer = object_store::path::Path::from("_delta_log/_last_checkpoint");
    use object_store::ObjectStoreExt as _;
    let checkpointed = table
        .log_store()
        .object_store(None)
        .head(&pointer)
        .await
        .is_ok();
    if !checkpointed
        && !table
            .verify_deltatable_existence()
            .await
            .map_err(|e| TableError::delta(url, e))?
    {
        return Err(TableError::NotATable(url.to_string()));
    }
    match table.load().await {
        Ok(()) => Ok(table),
        Err(DeltaTableError::NotATable(_)) => Err(TableError::NotATable(url.to_string())),
        Err(e) => Err(TableError::delta(url, e)),
    }
}

/// Table properties sluice sets on the tables it creates: checkpoints every 10
/// commits with stats as structs and JSON, and the subject-key column (if any).
pub fn default_properties(key: Option<&str>) -> Vec<(String, String)> {
    let mut properties = vec![
        ("delta.checkpointInterval".to_string(), "10".to_string()),
        (
            "delta.checkpoint.writeStatsAsStruct".to_string(),
            "true".to_string(),
        ),
        (
            "delta.checkpoint.writeStatsAsJson".to_string(),
            "true".to_string(),
        ),
    ];
    if let Some(key) = key {
        properties.push((crate::maintain::KEY_PROPERTY.to_string(), key.to_string()));
    }
    properties
}

/// Delta table properties a table config may set (`[tables.properties]`):
/// none of them changes what Spark or BigQuery can read.
pub const SAFE_PROPERTIES: &[&str] = &[
    "delta.deletedFileRetentionDuration",
    "delta.logRetentionDuration",
    "delta.checkpointInterval",
    "delta.dataSkippingNumIndexedCols",
];

/// [`default_properties`] with a table config's own properties over them.
pub fn table_properties(
    key: Option<&str>,
    configured: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut properties: BTreeMap<String, String> = default_properties(key).into_iter().collect();
    properties.extend(configured.clone());
    properties.into_iter().collect()
}

/// Parses a Delta interval (`interval 7 days`, `interval 2 seconds`), as
/// delta-rs reads `delta.*Duration` properties.
pub fn parse_interval(text: &str) -> Option<std::time::Duration> {
    let mut words = text.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("interval") {
        return None;
    }
    let count: u64 = words.next()?.parse().ok()?;
    let unit = words.next()?.to_ascii_lowercase();
    if words.next().is_some() {
        return None;
    }
    let seconds = match unit.trim_end_matches('s') {
        "nanosecond" => return Some(std::time::Duration::from_nanos(count)),
        "microsecond" => return Some(std::time::Duration::from_micros(count)),
        "millisecond" => return Some(std::time::Duration::from_millis(count)),
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        "week" => 7 * 86_400,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(count.checked_mul(seconds)?))
}

/// Opens the table at `url`, creating it from `schema` (with `properties`) if it does not exist.
///
/// Several workers may race to create the same table: the loser's create
/// fails on the existing version 0 and it opens the winner's table. An
/// existing table must hold every configured column with the same type.
pub async fn open_or_create(
    url: &Url,
    storage_options: &BTreeMap<String, String>,
    name: &str,
    schema: &ArrowSchema,
    partition_by: &[String],
    properties: &[(String, String)],
    description: Option<&str>,
) -> Result<DeltaTable, TableError> {
    match open(url, storage_options).await {
        Ok(table) => {
            check_schema(url, &table, schema)?;
            return Ok(table);
        }
        Err(TableError::NotATable(_)) => {}
        Err(e) => return Err(e),
    }
    let kernel_schema: StructType = schema
        .try_into_kernel()
        .map_err(|e| TableError::delta(url, DeltaTableError::from(e)))?;
    let table = DeltaTableBuilder::from_url(url.clone())
        .map_err(|e| TableError::delta(url, e))?
        .with_storage_options(options(storage_options))
        .build()
        .map_err(|e| TableError::delta(url, e))?;
    // No retry: a creation that finds version 0 taken must fail (and open
    // the winner's table), not commit a second CREATE TABLE on top of it.
    let mut create = table.create().with_commit_properties(
        deltalake::kernel::transaction::CommitProperties::default().with_max_retries(0),
    );
    if let Some(description) = description {
        create = create.with_comment(description);
    }
    // Deletion vectors are switched on by a second commit: a protocol
    // delta-rs derives at creation lists legacy writer features it then
    // refuses to write.
    let vectors = properties
        .iter()
        .any(|(k, v)| k == deletion_vectors::ENABLE_PROPERTY && v == "true");
    let properties: Vec<&(String, String)> = properties
        .iter()
        .filter(|(k, _)| k != deletion_vectors::ENABLE_PROPERTY)
        .collect();
    let created = create
        .with_table_name(name)
        .with_columns(kernel_schema.fields().cloned())
        .with_partition_columns(partition_by.to_vec())
        .with_configuration(properties.iter().map(|(k, v)| (k.clone(), Some(v.clone()))))
        .with_raise_if_key_not_exists(false)
        .await;
    match created {
        Ok(table) if vectors => {
            tracing::info!(table = name, %url, "created table");
            deletion_vectors::enable(table, name).await
        }
        Ok(table) => {
            tracing::info!(table = name, %url, "created table");
            Ok(table)
        }
        Err(create_error) => match open(url, storage_options).await {
            Ok(table) => {
                check_schema(url, &table, schema)?;
                match vectors {
                    true => deletion_vectors::enable(table, name).await,
                    false => Ok(table),
                }
            }
            Err(_) => Err(TableError::delta(url, create_error)),
        },
    }
}

fn check_schema(url: &Url, table: &DeltaTable, expected: &ArrowSchema) -> Result<(), TableError> {
    let snapshot = table.snapshot().map_err(|e| TableError::delta(url, e))?;
    let actual = snapshot.snapshot().arrow_schema();
    for field in expected.fields() {
        match actual.field_with_name(field.name()) {
            Err(_) => {
                return Err(TableError::SchemaMismatch {
                    url: url.to_string(),
                    column: field.name().clone(),
                    problem: "is missing from the table".into(),
                })
            }
            Ok(existing) if !same_type(existing.data_type(), field.data_type()) => {
                return Err(TableError::SchemaMismatch {
                    url: url.to_string(),
                    column: field.name().clone(),
                    problem: format!(
                        "is {} in the table but {} in the config",
                        existing.data_type(),
                        field.data_type()
                    ),
                })
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

fn same_type(a: &arrow::datatypes::DataType, b: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType::*;
    match (a, b) {
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (Timestamp(ua, za), Timestamp(ub, zb)) => ua == ub && za.is_some() == zb.is_some(),
        (Struct(fa), Struct(fb)) => {
            fa.len() == fb.len()
                && fa
                    .iter()
                    .zip(fb.iter())
                    .all(|(x, y)| x.name() == y.name() && same_type(x.data_type(), y.data_type()))
        }
        (List(x) | LargeList(x), List(y) | LargeList(y)) => same_type(x.data_type(), y.data_type()),
        (Map(x, _), Map(y, _)) => same_type(x.data_type(), y.data_type()),
        _ => a == b,
    }
}

/// The positions `table` (at its loaded version) records for `app_ids`.
pub async fn recorded_positions(
    table: &DeltaTable,
    app_ids: &[String],
) -> Result<HashMap<String, i64>, DeltaTableError> {
    let snapshot = table.snapshot()?;
    let log_store = table.log_store();
    let mut found = HashMap::new();
    for app_id in app_ids {
        if let Some(version) = snapshot
            .transaction_version(log_store.as_ref(), app_id)
            .await?
        {
            found.insert(app_id.clone(), version);
        }
    }
    Ok(found)
}

/// A [`PositionLookup`] that reads the latest version of the table at `url`.
pub fn position_lookup(url: Url, storage_options: BTreeMap<String, String>) -> PositionLookup {
    Arc::new(move |app_ids: Vec<String>| {
        let url = url.clone();
        let storage_options = storage_options.clone();
        Box::pin(async move {
            let table = open(&url, &storage_options)
                .await
                .map_err(|e| e.to_string())?;
            recorded_positions(&table, &app_ids)
                .await
                .map_err(|e| format!("table {url}: {e}"))
        })
    })
}

/// The URL of a location (path or URL) without creating or requiring anything.
pub fn location_url(location: &str) -> Result<Url, TableError> {
    register_object_stores();
    let invalid = |reason: String| TableError::Location {
        location: location.to_string(),
        reason,
    };
    if location.contains("://") {
        return Url::parse(location).map_err(|e| invalid(e.to_string()));
    }
    let absolute = std::path::absolute(location).map_err(|e| invalid(e.to_string()))?;
    Url::from_directory_path(absolute).map_err(|_| invalid("not a directory path".into()))
}

/// Like [`resolve_location`] but never creates anything: a local path must exist.
pub fn resolve_existing(location: &str) -> Result<Url, TableError> {
    if location.contains("://") {
        return Url::parse(location).map_err(|e| TableError::Location {
            location: location.to_string(),
            reason: e.to_string(),
        });
    }
    let path = std::path::Path::new(location);
    let canonical = path
        .canonicalize()
        .map_err(|_| TableError::NotATable(location.to_string()))?;
    Url::from_directory_path(canonical).map_err(|_| TableError::Location {
        location: location.to_string(),
        reason: "not an absolute directory path".into(),
    })
}

/// The object store at a lake root (local directory, S3, Azure), for what
/// sluice keeps beside the tables.
pub fn lake_store(
    root: &str,
    storage_options: &BTreeMap<String, String>,
) -> Result<Arc<dyn deltalake::ObjectStore>, TableError> {
    let url = resolve_location(root)?;
    let failed = |source| TableError::Delta {
        url: url.to_string(),
        source: Box::new(source),
    };
    Ok(DeltaTableBuilder::from_url(url.clone())
        .map_err(failed)?
        .with_storage_options(options(storage_options))
        .build_storage()
        .map_err(failed)?
        .object_store(None))
}

/// The directories right under `root` that hold a Delta log, by name.
pub async fn list_tables(
    root: &str,
    options: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Url>, TableError> {
    let root_url = resolve_location(root)?;
    if root_url.scheme() == "file" {
        // A root that does not exist yet holds no tables.
        if let Ok(path) = root_url.to_file_path() {
            if !path.exists() {
                return Ok(BTreeMap::new());
            }
        }
    }
    let failed = |source| TableError::Delta {
        url: root_url.to_string(),
        source: Box::new(source),
    };
    let store = lake_store(root, options)?;
    let listing = store
        .list_with_delimiter(None)
        .await
        .map_err(|e| failed(e.into()))?;
    let mut found = BTreeMap::new();
    for dir in listing.common_prefixes {
        let Some(name) = dir.filename().map(str::to_string) else {
            continue;
        };
        let log = object_store::path::Path::from(format!("{dir}/_delta_log"));
        let holds_log = store
            .list_with_delimiter(Some(&log))
            .await
            .is_ok_and(|l| !l.objects.is_empty());
        if holds_log {
            found.insert(
                name.clone(),
                resolve_location(&child_location(root, &name))?,
            );
        }
    }
    Ok(found)
}
