//! `sluice bench erase-table`: builds the erasure benchmark's table fast,
//! straight through sluice's table writer (zstd, stats, bloom filter on
//! `user_id`), without going through JSON.
//!
//! Rows: `event_id`, `user_id` (`user-0000042`, uniform over `--users`),
//! `event_time`, `amount`, and a 256-character random `payload` (so the
//! files are not trivially compressible). Files are written one after the
//! other, eight per commit, each with `rows / files` rows.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::Action;
use deltalake::protocol::{DeltaOperation, SaveMode};

use super::CliError;
use crate::table::schema::timestamp_type;
use crate::table::writer::TableWriter;

/// Files per commit.
const FILES_PER_COMMIT: usize = 8;
/// Payload characters per row.
const PAYLOAD_CHARS: usize = 256;

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("event_time", timestamp_type(), false),
        Field::new("amount", DataType::Float64, true),
        Field::new("payload", DataType::Utf8, true),
    ]))
}

/// A small, fast, seeded generator (xorshift64*).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn batch(
    random: &mut Random,
    first: u64,
    rows: usize,
    users: u64,
) -> Result<RecordBatch, CliError> {
    let mut payload = Vec::with_capacity(rows);
    let mut user = Vec::with_capacity(rows);
    let mut ids = Vec::with_capacity(rows);
    let mut times = Vec::with_capacity(rows);
    let mut amounts = Vec::with_capacity(rows);
    for n in 0..rows as u64 {
        let mut text = String::with_capacity(PAYLOAD_CHARS);
        while text.len() < PAYLOAD_CHARS {
            let mut bits = random.next();
            for _ in 0..8 {
                text.push(ALPHABET[(bits & 63) as usize] as char);
                bits >>= 6;
            }
        }
        payload.push(text);
        user.push(format!("user-{:07}", random.next() % users));
        ids.push(format!("e-{}", first + n));
        times.push(1_714_521_600_000_000 + ((first + n) as i64) * 1000);
        amounts.push((random.next() % 10_000) as f64 / 100.0);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(StringArray::from(user)),
        Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
        Arc::new(Float64Array::from(amounts)),
        Arc::new(StringArray::from(payload)),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| CliError::Demo(e.to_string()))
}

/// Builds the table at `dir` (replacing it); returns (rows, bytes, seconds).
pub async fn build(
    dir: &std::path::Path,
    rows: u64,
    files: u64,
    users: u64,
) -> Result<(u64, u64, f64), CliError> {
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let url = crate::table::resolve_location(&dir.display().to_string())?;
    let mut table = crate::table::open_or_create(
        &url,
        &Default::default(),
        "erase_bench",
        &schema(),
        &[],
        &crate::table::default_properties(Some("user_id")),
        None,
    )
    .await?;
    let per_file = (rows / files.max(1)).max(1) as usize;
    let mut random = Random(0x5eed_1234_abcd_0001);
    let mut writer = TableWriter::new(&table, Some("user_id"), 1 << 30)
        .map_err(|e| CliError::Demo(e.to_string()))?;
    let (mut written, mut bytes, mut pending) = (0u64, 0u64, Vec::new());
    for file in 0..files {
        let mut left = per_file;
        while left > 0 {
            let n = left.min(8192);
            writer
                .write(batch(&mut random, written, n, users)?)
                .await
                .map_err(|e| CliError::Demo(e.to_string()))?;
            written += n as u64;
            left -= n;
        }
        let adds = writer
            .finish()
            .await
            .map_err(|e| CliError::Demo(e.to_string()))?;
        bytes += adds.iter().map(|a| a.size as u64).sum::<u64>();
        pending.extend(adds.into_iter().map(Action::Add));
        if pending.len() >= FILES_PER_COMMIT || file + 1 == files {
            let operation = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            };
            CommitBuilder::from(CommitProperties::default())
                .with_actions(std::mem::take(&mut pending))
                .build(
                    Some(
                        table
                            .snapshot()
                            .map_err(|e| CliError::Demo(e.to_string()))?,
                    ),
                    table.log_store(),
                    operation,
                )
                .await
                .map_err(|e| CliError::Demo(e.to_string()))?;
            table
                .update_state()
                .await
                .map_err(|e| CliError::Demo(e.to_string()))?;
        }
    }
    Ok((written, bytes, started.elapsed().as_secs_f64()))
}
