//! Deletion vectors: the rows of a data file that a commit marks as
//! removed without rewriting the file (Delta's `deletionVectors` table
//! feature, reader version 3 and writer version 7).
//!
//! Mirror merges use them (see [`crate::ingest::mirror`]): a batch of
//! updates spread over a large table marks the replaced rows in each file
//! it touches instead of copying every file. Readers apply them: Spark
//! (Delta 2.3 and later), BigQuery, Trino, DuckDB, `delta_kernel`, and
//! every reader of sluice's own (merges, compaction, Z-order, erasure).
//!
//! # Format
//!
//! A deletion vector is a 64-bit Roaring bitmap of row indexes within its
//! file, in the portable serialization. sluice writes the vectors of one
//! commit into one file, `deletion_vector_<uuid>.bin` at the table root:
//! a version byte (1), then per vector its size (big-endian, magic
//! included), the magic number 1681511377 (little-endian), the bitmap and a
//! CRC-32 of magic and bitmap (big-endian). The `add` action names it by
//! storage type `u`: the UUID in Z85, 20 characters. Reading also takes
//! inline vectors (`i`) and absolute paths under the table root (`p`).
//! The tests read what sluice writes with `delta_kernel`.
//!
//! # Physical bytes
//!
//! A deleted row's bytes stay in its file until the file is rewritten:
//! compaction rewrites files whose vector covers a large share of their
//! rows, and erasure rewrites every file holding a subject's key, live or
//! deleted, so erased values never survive behind a vector.

use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use deltalake::kernel::{DeletionVectorDescriptor, StorageType};
use deltalake::{DeltaTableError, ObjectStore, Path};
use object_store::ObjectStoreExt as _;
use roaring::RoaringTreemap;

/// The first byte of a deletion vector file.
const FORMAT_VERSION: u8 = 1;
/// The magic number that opens a serialized 64-bit Roaring bitmap.
const MAGIC: u32 = 1_681_511_377;
/// Length of a Z85-encoded UUID at the end of a `u` path.
const UUID_Z85_LEN: usize = 20;
/// Table property that turns deletion vectors on.
pub const ENABLE_PROPERTY: &str = "delta.enableDeletionVectors";
/// Share of a file's rows deleted by its vector at which compaction
/// rewrites it (dropping them physically) even when it is not small.
pub const PURGE_SHARE: f64 = 0.1;

/// Whether writers may add deletion vectors to `table`: the protocol lists
/// the feature for readers and writers and the table property enables it.
pub fn enabled(table: &deltalake::DeltaTable) -> bool {
    let Ok(snapshot) = table.snapshot() else {
        return false;
    };
    let protocol = serde_json::to_value(snapshot.protocol()).unwrap_or_default();
    let listed = |key: &str| {
        protocol[key]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "deletionVectors"))
    };
    let property = snapshot
        .metadata()
        .configuration()
        .get(ENABLE_PROPERTY)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    property && listed("readerFeatures") && listed("writerFeatures")
}

/// Switches deletion vectors on for a table just created: one commit of
/// the protocol (reader 3, writer 7, `deletionVectors` and the features
/// the table already lists) and of the enabling property. A table that
/// has them already, or that moved on past its creation, is left alone;
/// when two workers race, one commit lands and the other finds it. A
/// failure is logged: merges then rewrite files instead.
pub async fn enable(
    mut table: deltalake::DeltaTable,
    name: &str,
) -> Result<deltalake::DeltaTable, super::TableError> {
    for _ in 0..3 {
        if enabled(&table) || table.version() != Some(0) {
            return Ok(table);
        }
        let snapshot = table
            .snapshot()
            .map_err(|e| super::TableError::delta(table.table_url(), e))?;
        let current = serde_json::to_value(snapshot.protocol()).unwrap_or_default();
        let features = |key: &str| {
            let mut listed: Vec<serde_json::Value> =
                current[key].as_array().cloned().unwrap_or_default();
            if !listed.iter().any(|f| f == "deletionVectors") {
                listed.push("deletionVectors".into());
            }
            listed
        };
        let protocol: deltalake::kernel::Action = serde_json::from_value(serde_json::json!({
            "protocol": {
                "minReaderVersion": 3,
                "minWriterVersion": 7,
                "readerFeatures": features("readerFeatures"),
                "writerFeatures": features("writerFeatures"),
            }
        }))
        .map_err(|e| DeltaTableError::Generic(format!("deletion vector protocol: {e}")))
        .map_err(|e| super::TableError::delta(table.table_url(), e))?;
        let property = [(ENABLE_PROPERTY.to_string(), "true".to_string())].into();
        match super::about::set_properties_with(&table, property, Some(protocol)).await {
            Ok(_) => tracing::info!(table = name, "deletion vectors enabled"),
            Err(error) => {
                tracing::debug!(table = name, %error, "enabling deletion vectors raced; reading the table again");
            }
        }
        table
            .update_state()
            .await
            .map_err(|e| super::TableError::delta(table.table_url(), e))?;
    }
    if !enabled(&table) {
        tracing::warn!(
            table = name,
            "deletion vectors could not be enabled; merges rewrite files instead"
        );
    }
    Ok(table)
}

/// The deletion vectors of one commit, written into one file.
pub struct VectorFile {
    uuid: uuid::Uuid,
    bytes: Vec<u8>,
}

impl Default for VectorFile {
    fn default() -> Self {
        Self::new()
    }
}

impl VectorFile {
    /// An empty file with a fresh name.
    pub fn new() -> Self {
        Self {
            uuid: uuid::Uuid::new_v4(),
            bytes: vec![FORMAT_VERSION],
        }
    }

    /// Where it goes, relative to the table root.
    pub fn location(&self) -> Path {
        Path::from(format!("deletion_vector_{}.bin", self.uuid))
    }

    /// Whether no vector was added.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() == 1
    }

    /// Appends `rows` and returns the descriptor an `add` action carries.
    pub fn add(
        &mut self,
        rows: &RoaringTreemap,
    ) -> Result<DeletionVectorDescriptor, DeltaTableError> {
        let too_big = || DeltaTableError::Generic("deletion vector file over 2 GiB".into());
        let offset = i32::try_from(self.bytes.len()).map_err(|_| too_big())?;
        let mut framed = Vec::with_capacity(4 + rows.serialized_size());
        framed.extend_from_slice(&MAGIC.to_le_bytes());
        rows.serialize_into(&mut framed)
            .map_err(|e| DeltaTableError::Generic(format!("serializing a deletion vector: {e}")))?;
        let size = i32::try_from(framed.len()).map_err(|_| too_big())?;
        self.bytes.extend_from_slice(&(size as u32).to_be_bytes());
        self.bytes.extend_from_slice(&framed);
        self.bytes
            .extend_from_slice(&crc32fast::hash(&framed).to_be_bytes());
        Ok(DeletionVectorDescriptor {
            storage_type: StorageType::UuidRelativePath,
            path_or_inline_dv: z85::encode(self.uuid.as_bytes()),
            offset: Some(offset),
            size_in_bytes: size,
            cardinality: rows.len() as i64,
        })
    }

    /// Stores the file (nothing when no vector was added); returns its location.
    pub async fn put(self, store: &Arc<dyn ObjectStore>) -> Result<Option<Path>, DeltaTableError> {
        if self.is_empty() {
            return Ok(None);
        }
        let location = self.location();
        store.put(&location, self.bytes.into()).await?;
        Ok(Some(location))
    }
}

/// The object-store path (relative to the table root) of the file holding `dv`;
/// `None` for an inline vector.
pub fn stored_at(
    dv: &DeletionVectorDescriptor,
    root: &url::Url,
) -> Result<Option<Path>, DeltaTableError> {
    let invalid = |why: &str| {
        DeltaTableError::Generic(format!(
            "deletion vector `{}` ({}): {why}",
            dv.path_or_inline_dv, dv.storage_type
        ))
    };
    match dv.storage_type {
        StorageType::Inline => Ok(None),
        StorageType::UuidRelativePath => {
            let text = dv.path_or_inline_dv.as_str();
            if text.len() < UUID_Z85_LEN || !text.is_char_boundary(text.len() - UUID_Z85_LEN) {
                return Err(invalid("the path does not end in a Z85 UUID"));
            }
            let (prefix, encoded) = text.split_at(text.len() - UUID_Z85_LEN);
            let decoded = z85::decode(encoded).map_err(|_| invalid("the UUID is not Z85"))?;
            let uuid = uuid::Uuid::from_slice(&decoded).map_err(|_| invalid("not a UUID"))?;
            Ok(Some(match prefix {
                "" => Path::from(format!("deletion_vector_{uuid}.bin")),
                prefix => Path::from(format!("{prefix}/deletion_vector_{uuid}.bin")),
            }))
        }
        StorageType::AbsolutePath => {
            let url = url::Url::parse(&dv.path_or_inline_dv).map_err(|_| invalid("not a URL"))?;
            let root = root.as_str().trim_end_matches('/');
            let relative = url
                .as_str()
                .strip_prefix(root)
                .map(|r| r.trim_start_matches('/'))
                .ok_or_else(|| invalid("outside the table's root"))?;
            Ok(Some(
                Path::from_url_path(relative).map_err(|_| invalid("not a path"))?,
            ))
        }
    }
}

/// Reads the rows `dv` removes.
pub async fn read(
    store: &Arc<dyn ObjectStore>,
    root: &url::Url,
    dv: &DeletionVectorDescriptor,
) -> Result<RoaringTreemap, DeltaTableError> {
    let size = usize::try_from(dv.size_in_bytes).unwrap_or(0);
    let corrupt = |why: String| {
        DeltaTableError::Generic(format!(
            "deletion vector `{}` ({}): {why}",
            dv.path_or_inline_dv, dv.storage_type
        ))
    };
    let framed: bytes::Bytes = match stored_at(dv, root)? {
        None => z85::decode(&dv.path_or_inline_dv)
            .map_err(|_| corrupt("inline bytes are not Z85".into()))?
            .into(),
        Some(location) => {
            let start = usize::try_from(dv.offset.unwrap_or(1)).unwrap_or(1);
            let read = store
                .get_range(&location, (start as u64)..(start + 4 + size + 4) as u64)
                .await?;
            let declared = u32::from_be_bytes(read[..4].try_into().expect("four bytes")) as usize;
            if declared != size {
                return Err(corrupt(format!(
                    "the file says {declared} bytes, the log {size}"
                )));
            }
            let crc = u32::from_be_bytes(read[4 + size..].try_into().expect("four bytes"));
            if crc32fast::hash(&read[4..4 + size]) != crc {
                return Err(corrupt("checksum mismatch".into()));
            }
            read.slice(4..4 + size)
        }
    };
    if framed.len() < 4 || u32::from_le_bytes(framed[..4].try_into().expect("four bytes")) != MAGIC
    {
        return Err(corrupt("not a portable 64-bit Roaring bitmap".into()));
    }
    let end = size.min(framed.len()).max(4);
    RoaringTreemap::deserialize_from(&framed[4..end]).map_err(|e| corrupt(e.to_string()))
}

/// The rows of a file a reader may see, batch by batch: each batch read in
/// order loses the rows its deletion vector removes.
pub struct LiveRows {
    deleted: std::iter::Peekable<roaring::treemap::IntoIter>,
    next: u64,
}

impl LiveRows {
    /// Every row of a file without a deletion vector.
    pub fn all() -> Self {
        Self::except(RoaringTreemap::new())
    }

    /// The rows not in `deleted`.
    pub fn except(deleted: RoaringTreemap) -> Self {
        Self {
            deleted: deleted.into_iter().peekable(),
            next: 0,
        }
    }

    /// The rows of a file with `dv` (if any).
    pub async fn of(
        store: &Arc<dyn ObjectStore>,
        root: &url::Url,
        dv: Option<&DeletionVectorDescriptor>,
    ) -> Result<Self, DeltaTableError> {
        Ok(match dv {
            Some(dv) => Self::except(read(store, root, dv).await?),
            None => Self::all(),
        })
    }

    /// Which of the next `rows` rows are live (`None`: all of them); moves past them.
    pub fn mask(&mut self, rows: usize) -> Option<BooleanArray> {
        let (start, end) = (self.next, self.next + rows as u64);
        self.next = end;
        let mut mask: Option<Vec<bool>> = None;
        while let Some(&row) = self.deleted.peek() {
            if row >= end {
                break;
            }
            self.deleted.next();
            if row >= start {
                mask.get_or_insert_with(|| vec![true; rows])[(row - start) as usize] = false;
            }
        }
        mask.map(BooleanArray::from)
    }

    /// `batch`, the next rows of the file, without its deleted rows.
    pub fn filter(&mut self, batch: RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
        match self.mask(batch.num_rows()) {
            Some(mask) => arrow::compute::filter_record_batch(&batch, &mask),
            None => Ok(batch),
        }
    }
}

/// `stats` (an `add`'s JSON statistics) marked as possibly wider than the
/// live rows, as the protocol asks of a file with a deletion vector.
pub fn wide_stats(stats: Option<&str>) -> Option<String> {
    let mut value: serde_json::Value = serde_json::from_str(stats?).ok()?;
    value
        .as_object_mut()?
        .insert("tightBounds".into(), serde_json::Value::Bool(false));
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<dyn ObjectStore>, url::Url) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("store"),
        );
        let root = url::Url::from_directory_path(dir.path()).expect("url");
        (dir, store, root)
    }

    #[tokio::test]
    async fn vectors_written_in_one_file_read_back_here_and_in_delta_kernel() {
        let (_dir, store, root) = store();
        let first: RoaringTreemap = [0u64, 7, 8191, 8192, 70_000].into_iter().collect();
        let second: RoaringTreemap = (0..5_000_000u64).step_by(3).chain([1 << 33]).collect();
        let mut file = VectorFile::new();
        let a = file.add(&first).expect("first");
        let b = file.add(&second).expect("second");
        assert_eq!((a.offset, a.cardinality), (Some(1), 5));
        assert!(b.offset.unwrap() > a.offset.unwrap() + a.size_in_bytes);
        file.put(&store).await.expect("put");
        assert_eq!(read(&store, &root, &a).await.expect("read a"), first);
        assert_eq!(read(&store, &root, &b).await.expect("read b"), second);

        // The Delta maintainers' reader agrees.
        let engine = delta_kernel_default_engine::DefaultEngineBuilder::new(Arc::new(
            object_store::local::LocalFileSystem::new(),
        ))
        .build();
        for (dv, want) in [(&a, &first), (&b, &second)] {
            use delta_kernel::actions::deletion_vector as kernel_dv;
            let kernel = kernel_dv::DeletionVectorDescriptor::try_new(
                kernel_dv::DeletionVectorStorageType::PersistedRelative,
                dv.path_or_inline_dv.clone(),
                dv.offset,
                dv.size_in_bytes,
                dv.cardinality,
            )
            .expect("kernel descriptor");
            let rows = kernel
                .read(delta_kernel::Engine::storage_handler(&engine), &root)
                .expect("kernel read");
            assert_eq!(&rows, want);
        }
    }

    #[tokio::test]
    async fn a_damaged_vector_is_refused_with_its_name() {
        let (dir, store, root) = store();
        let mut file = VectorFile::new();
        let dv = file.add(&[3u64, 4].into_iter().collect()).expect("add");
        let location = file.location();
        file.put(&store).await.expect("put");
        let on_disk = dir.path().join(location.as_ref());
        let mut bytes = std::fs::read(&on_disk).expect("bytes");
        let last = bytes.len() - 6;
        bytes[last] ^= 0xff;
        std::fs::write(&on_disk, bytes).expect("write");
        let error = read(&store, &root, &dv)
            .await
            .expect_err("corrupt")
            .to_string();
        assert!(error.contains("checksum mismatch"), "{error}");
        assert!(error.contains(&dv.path_or_inline_dv), "{error}");
    }

    #[test]
    fn live_rows_drop_deleted_rows_across_batches() {
        let mut live = LiveRows::except([1u64, 2, 9, 10, 25].into_iter().collect());
        let masks: Vec<Option<Vec<bool>>> = [5usize, 5, 5, 5, 10]
            .into_iter()
            .map(|n| {
                live.mask(n)
                    .map(|m| m.iter().map(|v| v == Some(true)).collect())
            })
            .collect();
        assert_eq!(masks[0], Some(vec![true, false, false, true, true]));
        assert_eq!(masks[1], Some(vec![true, true, true, true, false]));
        assert_eq!(masks[2], Some(vec![false, true, true, true, true]));
        assert_eq!(masks[3], None);
        let mut last = vec![true; 10];
        last[5] = false;
        assert_eq!(masks[4], Some(last));
        assert_eq!(LiveRows::all().mask(3), None);
    }

    #[test]
    fn relative_paths_decode_with_and_without_a_prefix() {
        let root = url::Url::parse("s3://bucket/lake/t/").expect("url");
        let uuid = uuid::Uuid::new_v4();
        let mut dv = DeletionVectorDescriptor {
            storage_type: StorageType::UuidRelativePath,
            path_or_inline_dv: z85::encode(uuid.as_bytes()),
            offset: Some(1),
            size_in_bytes: 10,
            cardinality: 1,
        };
        let plain = stored_at(&dv, &root).expect("plain").expect("stored");
        assert_eq!(plain.as_ref(), format!("deletion_vector_{uuid}.bin"));
        dv.path_or_inline_dv = format!("ab{}", dv.path_or_inline_dv);
        let prefixed = stored_at(&dv, &root).expect("prefixed").expect("stored");
        assert_eq!(prefixed.as_ref(), format!("ab/deletion_vector_{uuid}.bin"));
        dv.storage_type = StorageType::AbsolutePath;
        dv.path_or_inline_dv = format!("s3://bucket/lake/t/x/deletion_vector_{uuid}.bin");
        let absolute = stored_at(&dv, &root).expect("absolute").expect("stored");
        assert_eq!(absolute.as_ref(), format!("x/deletion_vector_{uuid}.bin"));
        dv.path_or_inline_dv = "s3://other/d.bin".into();
        assert!(stored_at(&dv, &root).is_err());
    }

    #[test]
    fn wide_stats_keep_the_figures() {
        let wide = wide_stats(Some(r#"{"numRecords":4,"minValues":{"id":1}}"#)).expect("stats");
        let value: serde_json::Value = serde_json::from_str(&wide).expect("json");
        assert_eq!(value["numRecords"], 4);
        assert_eq!(value["tightBounds"], false);
        assert_eq!(wide_stats(None), None);
    }
}
