//! Lineage written into each commit's `commitInfo` under the key `sluice`:
//! for every source partition the commit covers, the position range and the
//! counts (received = committed + dead-lettered + suppressed), so `status` can prove the committed ranges are contiguous and the
//! counts add up.

use serde::{Deserialize, Serialize};

/// The key under which lineage is stored in `commitInfo`.
pub const COMMIT_INFO_KEY: &str = "sluice";

/// What kind of rows a commit holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CommitKind {
    /// Decoded rows of a data table.
    Data,
    /// Rejected records in a dead-letter table.
    DeadLetter,
}

/// Lineage of one commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommitLineage {
    /// What the commit holds.
    pub kind: CommitKind,
    /// The worker that made it.
    pub worker: String,
    /// One entry per source partition covered.
    pub partitions: Vec<PartitionRange>,
    /// Top-level fields of the batch's records the table did not have, with
    /// how many records held each (JSON; added or not, per `evolve`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub unknown_fields: std::collections::BTreeMap<String, u64>,
    /// Where the registry holds the schema ids of the commit's records
    /// (`subject vN`, by id), as far as the registry said.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub schemas: std::collections::BTreeMap<u32, String>,
    /// A mirror table's merge: what it did to the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeSummary>,
}

/// What a merge did, recorded in its commit's lineage (`merge`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MergeSummary {
    /// Mutations in the batch.
    pub mutations: u64,
    /// Distinct primary keys among them.
    pub keys: u64,
    /// Rows appended (the latest images of inserted and updated keys).
    pub upserted: u64,
    /// Keys whose latest mutation is a delete.
    pub deleted: u64,
    /// Existing rows removed (replaced or deleted).
    pub removed: u64,
    /// Keys whose mutation was at or before the position the table holds.
    pub stale: u64,
    /// Files whose statistics admitted a key.
    pub files_in_range: u64,
    /// Files whose key column was read.
    pub files_read: u64,
    /// Files rewritten.
    pub files_rewritten: u64,
    /// Bytes of the files rewritten.
    pub bytes_rewritten: u64,
    /// Files that stay, given a deletion vector for the rows they lose.
    #[serde(default)]
    pub files_marked: u64,
    /// Partial updates (MongoDB `patch`) of keys the table does not hold:
    /// there was no row to apply them to.
    #[serde(default)]
    pub unmatched: u64,
}

impl MergeSummary {
    /// Adds `other`'s counts to these.
    pub fn absorb(&mut self, other: &MergeSummary) {
        self.mutations += other.mutations;
        self.keys += other.keys;
        self.upserted += other.upserted;
        self.deleted += other.deleted;
        self.unmatched += other.unmatched;
        self.removed += other.removed;
        self.stale += other.stale;
        self.files_in_range += other.files_in_range;
        self.files_read += other.files_read;
        self.files_rewritten += other.files_rewritten;
        self.bytes_rewritten += other.bytes_rewritten;
        self.files_marked += other.files_marked;
    }
}

/// The span of one source partition covered by a commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionRange {
    /// The `txn` app id of the partition.
    pub app_id: String,
    /// Position recorded before this commit (`None`: first commit).
    pub prev: Option<i64>,
    /// First position received in this batch.
    pub first: i64,
    /// Last position covered; the `txn` version this commit records.
    pub last: i64,
    /// Records received for this partition in the batch.
    pub received: u64,
    /// Rows committed to the data table.
    pub committed: u64,
    /// Records sent to the dead-letter table.
    pub dead_lettered: u64,
    /// Records dropped because their key is under an erasure request.
    #[serde(default)]
    pub suppressed: u64,
    /// Records that hold no row by design (change-event tombstones).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
    /// Registry schema ids of the records taken (Avro with a registry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema_ids: Vec<u32>,
    /// Registry schema ids whose records were dead-lettered (unknown to the
    /// registry, or changing the table's schema in a way readers cannot take).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_schema_ids: Vec<u32>,
    /// Records lost before this commit's first position could be read (a
    /// Kinesis shard trimmed past the recorded position, with
    /// `on_trimmed = "skip"`): what was lost, for people. A range with a
    /// note breaks the partition's contiguity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trimmed: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
