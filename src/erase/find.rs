//! Finding the data files that hold given keys without reading the
//! table: a file's min/max statistics on the key column first, then each
//! row group's bloom filter, then the key column alone. Erasure and mirror
//! merges both go through it, so a key is looked for one way.

use std::sync::Arc;

#[allow(deprecated)] // the suggested replacement needs a hand-written AsyncFileReader
use deltalake::parquet::arrow::async_reader::{
    ParquetObjectReader, ParquetRecordBatchStreamBuilder,
};
use futures::TryStreamExt;

use super::keys::{KeySet, MatchSource};
use super::EraseError;
use crate::maintain::files::LiveFile;

/// A candidate file with the keys it may hold.
pub(crate) struct Candidate {
    /// The file.
    pub file: LiveFile,
    /// The keys it may hold, per column.
    pub sets: Vec<KeySet>,
}

/// Confirms a candidate: its bloom filters first, then a read of the key
/// column(s) alone. Returns whether the column was read, and the candidate
/// narrowed to the keys it really holds (`None`: it holds none).
pub(crate) async fn confirm(
    store: Arc<dyn deltalake::ObjectStore>,
    candidate: Candidate,
    key_column: Option<&str>,
    source: MatchSource,
) -> Result<(bool, Option<Candidate>), EraseError> {
    let Candidate { file, sets } = candidate;
    #[allow(deprecated)] // the suggested replacement needs a hand-written AsyncFileReader
    let reader = ParquetObjectReader::new(store, file.location.clone()).with_file_size(file.size);
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    if !bloom_admits(&mut builder, &sets, key_column).await? {
        return Ok((false, None));
    }
    let descriptor = builder.metadata().file_metadata().schema_descr_ptr();
    let stored = |name: &str| {
        (0..descriptor.num_columns()).any(|i| descriptor.column(i).path().string() == name)
    };
    if !sets.iter().all(|s| stored(s.read_column(source))) {
        // A partition column: its value is the same for every row, so the rewrite decides.
        return Ok((false, Some(Candidate { file, sets })));
    }
    let mask = deltalake::parquet::arrow::ProjectionMask::columns(
        &descriptor,
        sets.iter().map(|s| s.read_column(source)),
    );
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()?;
    let mut found: Vec<KeySet> = sets
        .iter()
        .map(|s| KeySet::new(s.column(), s.kind()))
        .collect();
    while let Some(batch) = stream.try_next().await? {
        for (set, into) in sets.iter().zip(found.iter_mut()) {
            for (_, value) in set.matching_rows(&batch, source)? {
                into.insert(value);
            }
        }
    }
    found.retain(|s| !s.is_empty());
    if found.is_empty() {
        return Ok((true, None));
    }
    Ok((true, Some(Candidate { file, sets: found })))
}

/// A candidate its bloom filters do not rule out (`None`: they exclude
/// every key), for a caller that reads the key column itself next.
pub(crate) async fn bloom_screen(
    store: Arc<dyn deltalake::ObjectStore>,
    candidate: Candidate,
    key_column: &str,
) -> Result<Option<Candidate>, EraseError> {
    #[allow(deprecated)] // as above
    let reader = ParquetObjectReader::new(store, candidate.file.location.clone())
        .with_file_size(candidate.file.size);
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let admitted = bloom_admits(&mut builder, &candidate.sets, Some(key_column)).await?;
    Ok(admitted.then_some(candidate))
}

/// False only if every row group's bloom filter on the key column excludes every key.
#[allow(deprecated)] // ParquetObjectReader, as above
async fn bloom_admits(
    builder: &mut ParquetRecordBatchStreamBuilder<ParquetObjectReader>,
    sets: &[KeySet],
    key_column: Option<&str>,
) -> Result<bool, EraseError> {
    let Some(key_column) = key_column else {
        return Ok(true);
    };
    // Keys of columns without bloom filters can only be ruled out by reading.
    if sets.iter().any(|s| s.column() != key_column) {
        return Ok(true);
    }
    let Some(set) = sets.iter().find(|s| s.column() == key_column) else {
        return Ok(true);
    };
    let metadata = builder.metadata().clone();
    let columns = metadata.file_metadata().schema_descr();
    let Some(index) =
        (0..columns.num_columns()).find(|i| columns.column(*i).path().string() == key_column)
    else {
        return Ok(true);
    };
    let physical = columns.column(index).physical_type();
    let keys = set.values();
    for row_group in 0..metadata.num_row_groups() {
        match builder
            .get_row_group_column_bloom_filter(row_group, index)
            .await?
        {
            None => return Ok(true),
            Some(filter) if KeySet::bloom_may_contain(&filter, physical, &keys) => return Ok(true),
            Some(_) => {}
        }
    }
    Ok(false)
}

/// A file statistic of the column at a dotted path (`minValues` nest
/// struct fields: `{"customer": {"id": ...}}`).
pub(crate) fn stat_at<'a>(
    values: &'a serde_json::Value,
    path: &str,
) -> Option<&'a serde_json::Value> {
    path.split('.')
        .try_fold(values, |value, part| value.get(part))
}
