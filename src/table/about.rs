//! What a table says about itself, in the Delta log where every engine sees
//! it: the description as `metaData.description`, and `sluice.*` table
//! properties for the owner, tags, sources, schema source, key, a mirror
//! table's primary key and Z-order columns (Spark's `DESCRIBE TABLE EXTENDED` and `SHOW TBLPROPERTIES` show
//! them without sluice).
//!
//! They are written when the table is created and brought up to date when
//! ingestion starts and the config says otherwise (one metadata commit);
//! a failed update is a warning, never a reason to stop ingesting.

use std::collections::{BTreeMap, HashMap};

use deltalake::operations::update_table_metadata::TableMetadataUpdate;
use deltalake::DeltaTable;

use crate::config::{Config, SourceConfig, TableConfig};

/// The table's owner (a team or a person to ask).
pub const OWNER: &str = "sluice.owner";
/// Free tags, comma-separated.
pub const TAGS: &str = "sluice.tags";
/// Where the rows come from: `kafka:topic`, `kinesis:stream`, `file:path`,
/// comma-separated.
pub const SOURCES: &str = "sluice.sources";
/// What typed the table: declared columns, a registry subject and version,
/// a schema file or a Protobuf message.
pub const SCHEMA: &str = "sluice.schema";
/// The columns maintenance Z-orders by, comma-separated.
pub const ZORDER: &str = "sluice.zorder";
/// What the table is: `data`, `dead_letters` (with `sluice.table` naming
/// the data table) or `erasure_ledger`.
pub const KIND: &str = "sluice.kind";
/// The data table a dead-letter table belongs to.
pub const FOR_TABLE: &str = "sluice.table";
/// A mirror table's primary key, comma-separated (one row per key).
pub const PRIMARY_KEY: &str = "sluice.primary_key";
/// The name template of the `[[table_templates]]` entry that made it.
pub const TEMPLATE: &str = "sluice.template";
/// The naming convention's fields of its topic (`env=prod,service=...`).
pub const CONVENTION: &str = "sluice.convention";

/// A table's description and its `sluice.*` properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct About {
    /// The Delta `metaData.description`.
    pub description: Option<String>,
    /// Properties, by name.
    pub properties: BTreeMap<String, String>,
}

impl About {
    /// What `table` (fed by its configured sources, typed as `schema_source`
    /// says) tells about itself.
    pub fn of(config: &Config, table: &TableConfig, schema_source: &str) -> Self {
        let mut properties = BTreeMap::from([
            (KIND.to_string(), "data".to_string()),
            (SOURCES.to_string(), sources(config.sources_for(table))),
            (SCHEMA.to_string(), schema_source.to_string()),
            (crate::maintain::KEY_PROPERTY.to_string(), table.key.clone()),
        ]);
        if let Some(owner) = &table.owner {
            properties.insert(OWNER.into(), owner.clone());
        }
        if !table.tags.is_empty() {
            properties.insert(TAGS.into(), table.tags.join(","));
        }
        if table.mode == crate::config::TableMode::Mirror {
            properties.insert(PRIMARY_KEY.into(), table.primary_key.join(","));
        }
        let zorder = table.zorder_columns();
        if !zorder.is_empty() {
            properties.insert(ZORDER.into(), zorder.join(","));
        }
        Self {
            description: table.description.clone(),
            properties,
        }
    }

    /// The properties as `open_or_create` takes them.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Brings `table`'s description and properties up to date, when they
    /// differ; a failure is logged and the table returned as it was.
    pub async fn refresh(&self, table: DeltaTable, name: &str) -> DeltaTable {
        let Ok(snapshot) = table.snapshot() else {
            return table;
        };
        let metadata = snapshot.metadata();
        let configuration = metadata.configuration();
        let stale: HashMap<String, String> = self
            .properties
            .iter()
            .filter(|(k, v)| configuration.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let description_stale =
            self.description.is_some() && metadata.description() != self.description.as_deref();
        let mut table = table;
        if !stale.is_empty() {
            let before = table.clone();
            match set_properties(&table, stale).await {
                Ok(updated) => table = updated,
                Err(error) => {
                    tracing::warn!(table = name, %error, "table properties not updated");
                    table = before;
                }
            }
        }
        if description_stale {
            let before = table.clone();
            let update = TableMetadataUpdate {
                name: None,
                description: self.description.clone(),
            };
            match table.update_table_metadata().with_update(update).await {
                Ok(updated) => table = updated,
                Err(error) => {
                    tracing::warn!(table = name, %error, "table description not updated");
                    table = before;
                }
            }
        }
        table
    }
}

/// Adds `entry` (`kafka:topic`) to the table's `sluice.sources` unless it
/// is listed; the list stays sorted. A concurrent metadata change (another
/// worker adding its topic) is met by reading the table again.
pub async fn add_source(
    url: &url::Url,
    storage_options: &BTreeMap<String, String>,
    entry: &str,
) -> Result<(), deltalake::DeltaTableError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let table = super::open(url, storage_options)
            .await
            .map_err(|e| deltalake::DeltaTableError::Generic(e.to_string()))?;
        let listed = table
            .snapshot()?
            .metadata()
            .configuration()
            .get(SOURCES)
            .cloned()
            .unwrap_or_default();
        let mut sources: std::collections::BTreeSet<&str> =
            listed.split(',').filter(|s| !s.is_empty()).collect();
        if !sources.insert(entry) {
            return Ok(());
        }
        let joined = sources.into_iter().collect::<Vec<_>>().join(",");
        match set_properties(&table, HashMap::from([(SOURCES.to_string(), joined)])).await {
            Ok(_) => return Ok(()),
            Err(error) if attempt >= 5 => return Err(error),
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
            }
        }
    }
}

/// Sets table properties in one commit of the table's metadata, leaving
/// its protocol as it is (delta-rs's `set_tbl_properties` rewrites a
/// table-features protocol with legacy writer features it then refuses
/// to write).
pub async fn set_properties(
    table: &DeltaTable,
    properties: HashMap<String, String>,
) -> Result<DeltaTable, deltalake::DeltaTableError> {
    set_properties_with(table, properties, None).await
}

/// [`set_properties`], with a `protocol` action in the same commit.
pub(crate) async fn set_properties_with(
    table: &DeltaTable,
    properties: HashMap<String, String>,
    protocol: Option<deltalake::kernel::Action>,
) -> Result<DeltaTable, deltalake::DeltaTableError> {
    use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
    use deltalake::kernel::MetadataExt as _;
    let snapshot = table.snapshot()?;
    let mut metadata = snapshot.metadata().clone();
    for (key, value) in &properties {
        metadata = metadata.add_config_key(key.clone(), value.clone())?;
    }
    let operation = deltalake::protocol::DeltaOperation::SetTableProperties { properties };
    let actions = protocol
        .into_iter()
        .chain([deltalake::kernel::Action::Metadata(metadata)])
        .collect();
    CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await?;
    let mut table = table.clone();
    table.update_state().await?;
    Ok(table)
}

/// `kafka:topic`, `kinesis:stream`, `file:path` for each source, comma-separated.
pub fn sources<'a>(sources: impl Iterator<Item = &'a SourceConfig>) -> String {
    let mut out = Vec::new();
    for source in sources {
        match source {
            SourceConfig::Kafka(k) => out.extend(k.topics.iter().map(|t| format!("kafka:{t}"))),
            SourceConfig::Kinesis(k) => out.push(format!("kinesis:{}", k.stream)),
            SourceConfig::File(f) => out.push(format!("file:{}", f.path)),
        }
    }
    out.join(",")
}
