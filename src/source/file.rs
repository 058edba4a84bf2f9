//! Files as a source: a file, a directory, or a glob. NDJSON (`.gz` too),
//! Avro object container files (see [`super::container`]) or
//! length-delimited Protobuf messages (a varint length before each).
//!
//! Each file is one partition (its path relative to the source's base
//! directory) and a record's position is its 0-based line number (Avro,
//! Protobuf: record number), recorded in
//! the table like a Kafka offset. Re-running a backfill therefore skips every
//! line the table already holds: the reader asks the table for each file's
//! recorded line before reading it and starts at the next one. Files are read
//! in name order on a dedicated thread; blank lines are skipped but keep
//! their numbers.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Assignment, PartitionId, PositionLookup, Record, SourceControl, SourceEvent};
use crate::config::{FileSourceConfig, Format};
use crate::ingest::budget::MemoryBudget;

/// Records sent to the pipeline in one event.
const CHUNK_RECORDS: usize = 2048;

/// Errors finding or reading input files.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    /// The path, directory or glob matched nothing.
    #[error("source `{source_name}`: `{path}` matches no file")]
    NoFiles {
        /// Source name.
        source_name: String,
        /// The configured path.
        path: String,
    },
    /// The glob pattern is malformed.
    #[error("source `{source_name}`: bad glob `{path}`: {message}")]
    BadGlob {
        /// Source name.
        source_name: String,
        /// The configured path.
        path: String,
        /// The parser's message.
        message: String,
    },
}

/// The files a file source reads, and the directory their partition names are relative to.
#[derive(Debug, Clone)]
pub struct FileSet {
    base: PathBuf,
    files: Vec<PathBuf>,
    format: Format,
}

impl FileSet {
    /// Resolves a file, directory or glob into a sorted list of files.
    pub fn resolve(config: &FileSourceConfig) -> Result<Self, FileSourceError> {
        let path = Path::new(&config.path);
        let (base, mut files) = if path.is_file() {
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (base, vec![path.to_path_buf()])
        } else if path.is_dir() {
            let mut files = Vec::new();
            collect_dir(path, config.format, &mut files);
            (path.to_path_buf(), files)
        } else {
            let base: PathBuf = path
                .components()
                .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
                .collect();
            let entries = glob::glob(&config.path).map_err(|e| FileSourceError::BadGlob {
                source_name: config.name.clone(),
                path: config.path.clone(),
                message: e.to_string(),
            })?;
            (
                base,
                entries
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .collect(),
            )
        };
        files.sort();
        if files.is_empty() {
            return Err(FileSourceError::NoFiles {
                source_name: config.name.clone(),
                path: config.path.clone(),
            });
        }
        Ok(Self {
            base,
            files,
            format: config.format,
        })
    }

    /// The resolved files.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn partition_of(&self, source: &str, file: &Path) -> PartitionId {
        let relative = file.strip_prefix(&self.base).unwrap_or(file);
        PartitionId {
            source: source.to_string(),
            stream: "file".to_string(),
            partition: relative.to_string_lossy().replace('\\', "/"),
        }
    }
}

fn collect_dir(dir: &Path, format: Format, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_dir(&path, format, out);
        } else {
            let name = path.to_string_lossy();
            let stem = name.strip_suffix(".gz").unwrap_or(&name);
            let extensions: &[&str] = match format {
                Format::Json | Format::Debezium => &[".json", ".ndjson", ".jsonl"],
                Format::Avro => &[".avro"],
                Format::Protobuf => &[".binpb"],
            };
            if extensions.iter().any(|ext| stem.ends_with(ext)) {
                out.push(path);
            }
        }
    }
}

struct Shared {
    stop: AtomicBool,
    seeks: Mutex<Vec<(Arc<PartitionId>, i64)>>,
}

/// Handle to a running file source.
pub struct FileSourceHandle {
    shared: Arc<Shared>,
}

impl SourceControl for FileSourceHandle {
    fn seek(&self, partition: Arc<PartitionId>, next_position: i64) {
        self.shared
            .seeks
            .lock()
            .expect("seek lock")
            .push((partition, next_position));
    }

    fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts reading `files` on a dedicated thread; events go to `tx`.
pub fn spawn(
    source_name: &str,
    files: FileSet,
    lookup: PositionLookup,
    budget: Arc<MemoryBudget>,
    tx: mpsc::Sender<SourceEvent>,
) -> Arc<FileSourceHandle> {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        seeks: Mutex::new(Vec::new()),
    });
    let handle = Arc::new(FileSourceHandle {
        shared: shared.clone(),
    });
    let runtime = tokio::runtime::Handle::current();
    let source_name = source_name.to_string();
    std::thread::Builder::new()
        .name(format!("file-{source_name}"))
        .spawn(move || {
            let reader = Reader { shared, budget, tx };
            if let Err(message) = reader.run(&source_name, &files, &lookup, &runtime) {
                tracing::error!(source = %source_name, error = %message, "file source stopped");
                let _ = reader.tx.blocking_send(SourceEvent::Failed(format!(
                    "source `{source_name}`: {message}"
                )));
            }
        })
        .expect("spawn file source thread");
    handle
}

struct Reader {
    shared: Arc<Shared>,
    budget: Arc<MemoryBudget>,
    tx: mpsc::Sender<SourceEvent>,
}

impl Reader {
    fn run(
        &self,
        source_name: &str,
        files: &FileSet,
        lookup: &PositionLookup,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), String> {
        let partitions: Vec<(PathBuf, Arc<PartitionId>)> = files
            .files
            .iter()
            .map(|f| (f.clone(), Arc::new(files.partition_of(source_name, f))))
            .collect();
        let app_ids = partitions.iter().map(|(_, p)| p.app_id()).collect();
        let recorded = runtime.block_on(lookup(app_ids))?;
        let assignments: Vec<Assignment> = partitions
            .iter()
            .map(|(_, p)| Assignment {
                partition: p.clone(),
                recorded: recorded.get(&p.app_id()).copied(),
            })
            .collect();
        let mut queue: VecDeque<(PathBuf, Arc<PartitionId>, i64)> = assignments
            .iter()
            .zip(&partitions)
            .map(|(a, (path, p))| (path.clone(), p.clone(), a.recorded.map_or(0, |r| r + 1)))
            .collect();
        self.send(SourceEvent::Assigned(assignments))?;

        while let Some((path, partition, start)) = queue.pop_front() {
            let outcome = match files.format {
                Format::Json | Format::Debezium => self.read_file(&path, &partition, start)?,
                _ => self.read_binary(&path, &partition, start, files.format)?,
            };
            match outcome {
                FileOutcome::Done => {}
                FileOutcome::Stopped => return Ok(()),
                FileOutcome::Seek(moves) => {
                    // Re-read the moved partitions from their new starts, the current one first.
                    for (moved, next) in moves.into_iter().rev() {
                        queue.retain(|(_, p, _)| p != &moved);
                        let moved_path = partitions
                            .iter()
                            .find(|(_, p)| p == &moved)
                            .map(|(f, _)| f.clone());
                        if let Some(moved_path) = moved_path {
                            queue.push_front((moved_path, moved.clone(), next));
                        }
                        self.send(SourceEvent::Reseeked(moved))?;
                    }
                }
            }
        }
        self.send(SourceEvent::End)
    }

    fn send(&self, event: SourceEvent) -> Result<(), String> {
        self.tx
            .blocking_send(event)
            .map_err(|_| "pipeline closed".to_string())
    }

    /// Reserves `record`'s charge, waiting while the budget is spent; false
    /// when stopped. Before it waits, the records of `chunk` are handed
    /// over: the budget may be spent on exactly those, and the pipeline
    /// can only flush (and free them) once it has them.
    fn reserve(&self, record: &Record, chunk: &mut Vec<Record>) -> Result<bool, String> {
        if self.budget.try_reserve(record.charge()) {
            return Ok(true);
        }
        if !chunk.is_empty() {
            self.send(SourceEvent::Records(std::mem::take(chunk)))?;
        }
        Ok(self
            .budget
            .reserve_blocking(record.charge(), &self.shared.stop))
    }

    fn read_file(
        &self,
        path: &Path,
        partition: &Arc<PartitionId>,
        start: i64,
    ) -> Result<FileOutcome, String> {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let raw: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut lines = BufReader::with_capacity(1 << 20, raw);
        let mut chunk = Vec::with_capacity(CHUNK_RECORDS);
        let mut line = Vec::new();
        let mut number: i64 = -1;
        loop {
            line.clear();
            let read = lines
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("{}: line {}: {e}", path.display(), number + 2))?;
            if read == 0 {
                break;
            }
            number += 1;
            if number < start || line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            let record = Record {
                partition: partition.clone(),
                position: number,
                payload: Bytes::copy_from_slice(&line),
                timestamp_ms: None,
                key: None,
            };
            if !self.reserve(&record, &mut chunk)? {
                return Ok(FileOutcome::Stopped);
            }
            chunk.push(record);
            if chunk.len() >= CHUNK_RECORDS {
                self.send(SourceEvent::Records(std::mem::take(&mut chunk)))?;
                if let Some(outcome) = self.interrupted() {
                    return Ok(outcome);
                }
            }
        }
        if !chunk.is_empty() {
            self.send(SourceEvent::Records(chunk))?;
        }
        Ok(self.interrupted().unwrap_or(FileOutcome::Done))
    }

    /// Reads an Avro container or a length-delimited Protobuf file, one
    /// record per datum or message, from record number `start`.
    fn read_binary(
        &self,
        path: &Path,
        partition: &Arc<PartitionId>,
        start: i64,
        format: Format,
    ) -> Result<FileOutcome, String> {
        let name = path.display();
        let file = File::open(path).map_err(|e| format!("{name}: {e}"))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut number: i64 = -1;
        let mut chunk = Vec::with_capacity(CHUNK_RECORDS);
        let emit = |payload: Bytes,
                    number: i64,
                    chunk: &mut Vec<Record>|
         -> Result<Option<FileOutcome>, String> {
            if number < start {
                return Ok(None);
            }
            let record = Record {
                partition: partition.clone(),
                position: number,
                payload,
                timestamp_ms: None,
                key: None,
            };
            if !self.reserve(&record, chunk)? {
                return Ok(Some(FileOutcome::Stopped));
            }
            chunk.push(record);
            if chunk.len() >= CHUNK_RECORDS {
                self.send(SourceEvent::Records(std::mem::take(chunk)))?;
                return Ok(self.interrupted());
            }
            Ok(None)
        };
        // Records read before a damaged part are handed on before the error.
        let read = || -> Result<Option<FileOutcome>, String> {
            if format == Format::Avro {
                let mut container = super::container::Container::open(reader)
                    .map_err(|e| format!("{name}: {e}"))?;
                while let Some(datums) = container
                    .next_block()
                    .map_err(|e| format!("{name}: after record {number}: {e}"))?
                {
                    for datum in datums {
                        number += 1;
                        if let Some(outcome) = emit(datum, number, &mut chunk)? {
                            return Ok(Some(outcome));
                        }
                    }
                }
            } else {
                let mut message = Vec::new();
                loop {
                    let mut len = 0u64;
                    let mut shift = 0;
                    loop {
                        let mut byte = [0u8];
                        let read = reader
                            .read(&mut byte)
                            .map_err(|e| format!("{name}: record {}: {e}", number + 1))?;
                        if read == 0 {
                            if shift == 0 {
                                break;
                            }
                            return Err(format!(
                                "{name}: record {}: length ends early",
                                number + 1
                            ));
                        }
                        len |= u64::from(byte[0] & 0x7f) << shift;
                        shift += 7;
                        if byte[0] & 0x80 == 0 || shift >= 64 {
                            break;
                        }
                    }
                    if shift == 0 {
                        break;
                    }
                    message.resize(len as usize, 0);
                    reader
                        .read_exact(&mut message)
                        .map_err(|_| format!("{name}: record {}: ends early", number + 1))?;
                    number += 1;
                    if let Some(outcome) =
                        emit(Bytes::copy_from_slice(&message), number, &mut chunk)?
                    {
                        return Ok(Some(outcome));
                    }
                }
            }
            Ok(None)
        };
        match read() {
            Ok(Some(outcome)) => return Ok(outcome),
            Ok(None) => {}
            Err(error) => {
                if !chunk.is_empty() {
                    self.send(SourceEvent::Records(std::mem::take(&mut chunk)))?;
                }
                return Err(error);
            }
        }
        if !chunk.is_empty() {
            self.send(SourceEvent::Records(chunk))?;
        }
        Ok(self.interrupted().unwrap_or(FileOutcome::Done))
    }

    fn interrupted(&self) -> Option<FileOutcome> {
        if self.shared.stop.load(Ordering::Relaxed) {
            return Some(FileOutcome::Stopped);
        }
        let moves = std::mem::take(&mut *self.shared.seeks.lock().expect("seek lock"));
        (!moves.is_empty()).then_some(FileOutcome::Seek(moves))
    }
}

enum FileOutcome {
    Done,
    Stopped,
    Seek(Vec<(Arc<PartitionId>, i64)>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_directories_globs_and_relative_partitions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("2024")).unwrap();
        for name in ["b.ndjson", "a.json.gz", "2024/c.jsonl", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"{}\n").unwrap();
        }
        let config = |path: String| FileSourceConfig {
            name: "backfill".into(),
            path,
            format: Format::Json,
            descriptor_set: None,
            message: None,
        };
        let set = FileSet::resolve(&config(dir.path().display().to_string())).unwrap();
        let names: Vec<String> = set
            .files()
            .iter()
            .map(|f| set.partition_of("backfill", f).partition)
            .collect();
        assert_eq!(names, ["2024/c.jsonl", "a.json.gz", "b.ndjson"]);

        let glob = FileSet::resolve(&config(format!("{}/*.ndjson", dir.path().display()))).unwrap();
        assert_eq!(glob.files().len(), 1);
        assert_eq!(
            glob.partition_of("backfill", &glob.files()[0]).partition,
            "b.ndjson"
        );

        let err = FileSet::resolve(&config(format!("{}/*.csv", dir.path().display()))).unwrap_err();
        assert!(err.to_string().contains("matches no file"), "{err}");
    }
}
