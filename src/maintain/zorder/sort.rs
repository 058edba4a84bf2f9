//! An external sort with a memory budget: rows are buffered until half the
//! budget is used, sorted by their key column, and spilled to a local Arrow
//! IPC file as one sorted run; at the end the runs are merged with a heap,
//! holding one batch per run. Without a spill everything stays in memory.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use arrow::array::{Array, AsArray, BinaryArray, RecordBatch};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;

/// Rows per output batch.
const OUT_ROWS: usize = 8192;

/// Sort statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SortStats {
    /// Sorted runs spilled to disk.
    pub spilled_runs: u64,
    /// Bytes spilled.
    pub spilled_bytes: u64,
    /// Most bytes of rows buffered in memory at once.
    pub peak_buffered: u64,
}

/// A key's first 8 bytes as a number that orders like the bytes (short
/// keys are zero-padded, so equal heads still need the full comparison).
fn head(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

/// Interleave indices of one chunk of a sorted index.
fn picks(chunk: &[(u64, u32, u32)]) -> Vec<(usize, usize)> {
    chunk
        .iter()
        .map(|&(_, b, r)| (b as usize, r as usize))
        .collect()
}

/// Bytes of the sort index per buffered row.
const INDEX_BYTES_PER_ROW: usize = std::mem::size_of::<(u64, u32, u32)>();

/// Sorts batches by their key column (a binary column, compared bytewise).
pub struct ExternalSorter {
    schema: SchemaRef,
    key: usize,
    budget: usize,
    dir: tempfile::TempDir,
    buffered: Vec<RecordBatch>,
    buffered_bytes: usize,
    runs: Vec<PathBuf>,
    stats: SortStats,
}

impl ExternalSorter {
    /// A sorter for batches of `schema` whose column `key` is the sort key.
    pub fn new(schema: SchemaRef, key: usize, budget: usize) -> std::io::Result<Self> {
        Ok(Self {
            schema,
            key,
            budget: budget.max(1 << 20),
            dir: tempfile::Builder::new().prefix("sluice-sort-").tempdir()?,
            buffered: Vec::new(),
            buffered_bytes: 0,
            runs: Vec::new(),
            stats: SortStats::default(),
        })
    }

    /// Adds a batch; spills a sorted run when half the budget is buffered.
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), ArrowError> {
        // The rows, and the index that will sort them.
        self.buffered_bytes +=
            batch.get_array_memory_size() + batch.num_rows() * INDEX_BYTES_PER_ROW;
        self.stats.peak_buffered = self.stats.peak_buffered.max(self.buffered_bytes as u64);
        self.buffered.push(batch);
        if self.buffered_bytes >= self.budget / 2 {
            self.spill()?;
        }
        Ok(())
    }

    /// The buffered rows in key order, as (head, batch, row): 16 bytes a
    /// row, counted in the buffered bytes.
    fn sorted_index(&self) -> Vec<(u64, u32, u32)> {
        let keys: Vec<&BinaryArray> = self
            .buffered
            .iter()
            .map(|b| b.column(self.key).as_binary::<i32>())
            .collect();
        // Sorting on the keys' first 8 bytes, held inline, avoids a pointer
        // chase and a memcmp per comparison; full keys break the ties.
        let mut index: Vec<(u64, u32, u32)> = keys
            .iter()
            .enumerate()
            .flat_map(|(b, keys)| {
                (0..keys.len()).map(move |r| (head(keys.value(r)), b as u32, r as u32))
            })
            .collect();
        index.sort_unstable_by(|x, y| {
            x.0.cmp(&y.0).then_with(|| {
                keys[x.1 as usize]
                    .value(x.2 as usize)
                    .cmp(keys[y.1 as usize].value(y.2 as usize))
            })
        });
        index
    }

    fn spill(&mut self) -> Result<(), ArrowError> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let index = self.sorted_index();
        let path = self
            .dir
            .path()
            .join(format!("run-{}.arrow", self.runs.len()));
        let file = File::create(&path)?;
        let mut writer = FileWriter::try_new(BufWriter::new(file), &self.schema)?;
        let refs: Vec<&RecordBatch> = self.buffered.iter().collect();
        for chunk in index.chunks(OUT_ROWS) {
            writer.write(&interleave_record_batch(&refs, &picks(chunk))?)?;
        }
        writer.finish()?;
        self.stats.spilled_runs += 1;
        self.stats.spilled_bytes += std::fs::metadata(&path)?.len();
        self.runs.push(path);
        self.buffered.clear();
        self.buffered_bytes = 0;
        Ok(())
    }

    /// Finishes the input; the returned stream yields sorted batches of at
    /// most `out_rows` rows.
    pub fn finish(mut self, out_rows: usize) -> Result<SortedBatches, ArrowError> {
        let out_rows = out_rows.clamp(1, OUT_ROWS);
        if self.runs.is_empty() {
            let index = self.sorted_index();
            return Ok(SortedBatches {
                stats: self.stats,
                out_rows,
                source: Source::Memory {
                    batches: std::mem::take(&mut self.buffered),
                    index,
                    next: 0,
                },
                _dir: self.dir,
            });
        }
        self.spill()?;
        let mut cursors = Vec::new();
        for path in &self.runs {
            let mut reader = FileReader::try_new(File::open(path)?, None)?;
            if let Some(batch) = reader.next().transpose()? {
                cursors.push(Cursor {
                    reader,
                    batch,
                    row: 0,
                });
            }
        }
        let mut order = Vec::with_capacity(cursors.len());
        for run in 0..cursors.len() {
            enqueue(&mut order, &cursors, self.key, run);
        }
        Ok(SortedBatches {
            stats: self.stats,
            out_rows,
            source: Source::Merge {
                cursors,
                order,
                key: self.key,
            },
            _dir: self.dir,
        })
    }
}

/// Puts `run` into `order` (descending by current key, then run) by binary
/// search: the runs are few, and keys are compared in place, not copied.
fn enqueue(order: &mut Vec<usize>, cursors: &[Cursor], key: usize, run: usize) {
    let new = (cursors[run].key(key), run);
    let at = order.partition_point(|&r| (cursors[r].key(key), r) > new);
    order.insert(at, run);
}

struct Cursor {
    reader: FileReader<File>,
    batch: RecordBatch,
    row: usize,
}

impl Cursor {
    fn key(&self, column: usize) -> &[u8] {
        self.batch.column(column).as_binary::<i32>().value(self.row)
    }
}

enum Source {
    Memory {
        batches: Vec<RecordBatch>,
        index: Vec<(u64, u32, u32)>,
        next: usize,
    },
    Merge {
        cursors: Vec<Cursor>,
        /// Runs by their current key, largest first: the next row's run is last.
        order: Vec<usize>,
        key: usize,
    },
}

/// Sorted output of an [`ExternalSorter`].
pub struct SortedBatches {
    stats: SortStats,
    out_rows: usize,
    source: Source,
    _dir: tempfile::TempDir,
}

impl SortedBatches {
    /// Spill statistics.
    pub fn stats(&self) -> SortStats {
        self.stats
    }

    /// The next sorted batch, or `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        match &mut self.source {
            Source::Memory {
                batches,
                index,
                next,
            } => {
                if *next >= index.len() {
                    return Ok(None);
                }
                let end = (*next + self.out_rows).min(index.len());
                let refs: Vec<&RecordBatch> = batches.iter().collect();
                let batch = interleave_record_batch(&refs, &picks(&index[*next..end]))?;
                *next = end;
                Ok(Some(batch))
            }
            Source::Merge {
                cursors,
                order,
                key,
            } => {
                // Batches referenced by this output chunk, and where each run's current one is.
                let mut arena: Vec<RecordBatch> = Vec::new();
                let mut slot: Vec<Option<usize>> = vec![None; cursors.len()];
                let mut picks: Vec<(usize, usize)> = Vec::with_capacity(self.out_rows);
                while picks.len() < self.out_rows {
                    let Some(run) = order.pop() else {
                        break;
                    };
                    let cursor = &mut cursors[run];
                    let at = *slot[run].get_or_insert_with(|| {
                        arena.push(cursor.batch.clone());
                        arena.len() - 1
                    });
                    picks.push((at, cursor.row));
                    cursor.row += 1;
                    if cursor.row >= cursor.batch.num_rows() {
                        match cursor.reader.next().transpose()? {
                            Some(batch) => {
                                cursor.batch = batch;
                                cursor.row = 0;
                                slot[run] = None;
                            }
                            None => continue,
                        }
                    }
                    enqueue(order, cursors, *key, run);
                }
                if picks.is_empty() {
                    return Ok(None);
                }
                let refs: Vec<&RecordBatch> = arena.iter().collect();
                Ok(Some(interleave_record_batch(&refs, &picks)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(schema: &SchemaRef, values: &[i64]) -> RecordBatch {
        let keys: Vec<Vec<u8>> = values
            .iter()
            .map(|v| ((*v as u64) ^ (1 << 63)).to_be_bytes().to_vec())
            .collect();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(values.to_vec())),
                Arc::new(BinaryArray::from_iter_values(keys.iter())),
            ],
        )
        .unwrap()
    }

    fn sort(budget: usize, input: &[Vec<i64>]) -> (Vec<i64>, SortStats) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("k", DataType::Binary, false),
        ]));
        let mut sorter = ExternalSorter::new(schema.clone(), 1, budget).unwrap();
        for values in input {
            sorter.push(batch(&schema, values)).unwrap();
        }
        let mut out = sorter.finish(1000).unwrap();
        let mut values = Vec::new();
        while let Some(b) = out.next_batch().unwrap() {
            values.extend(
                b.column(0)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .values()
                    .iter(),
            );
        }
        (values, out.stats())
    }

    #[test]
    fn sorts_in_memory_and_with_spilled_runs_alike() {
        let input: Vec<Vec<i64>> = (0..40)
            .map(|b| {
                (0..5000)
                    .map(|i| ((i * 7919 + b * 104_729) % 100_003) - 50_000)
                    .collect()
            })
            .collect();
        let mut expected: Vec<i64> = input.iter().flatten().copied().collect();
        expected.sort();
        let (in_memory, stats) = sort(1 << 30, &input);
        assert_eq!(stats.spilled_runs, 0);
        assert_eq!(in_memory, expected);
        let (spilled, stats) = sort(1 << 20, &input);
        assert!(stats.spilled_runs >= 4, "{stats:?}");
        assert!(stats.peak_buffered <= (1 << 20) / 2 + 200_000, "{stats:?}");
        assert_eq!(spilled, expected);
    }
}
