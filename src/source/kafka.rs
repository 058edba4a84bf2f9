//! Kafka as a source: a consumer-group member on a dedicated thread.
//!
//! Offsets are never committed to the broker: `enable.auto.commit` is off and
//! the group's committed offsets are ignored. When the group assigns
//! partitions, the rebalance callback asks the table for each partition's
//! recorded offset and assigns the partition at that offset + 1 (or at
//! `start_from` when the table has none), before any record is fetched. When
//! partitions are revoked, the callback hands the records it holds to the
//! pipeline, asks it to commit what it buffered for them, and waits (up to the
//! shutdown grace) before letting go, so a clean rebalance loses no work. A
//! worker that misses that window is fenced at commit time instead (see
//! `table::commit`).
//!
//! Groups rebalance incrementally (`cooperative-sticky`, see
//! [`GROUP_DEFAULTS`]): a rebalance revokes only the partitions that move,
//! and the others keep consuming. A revocation commits everything the
//! pipeline holds (its open files mix partitions), which covers the revoked
//! ones. `sluice ingest` and `serve` join as static members named by the
//! worker id (see [`crate::fleet::identity`]).
//!
//! Backpressure: each record is charged to the memory budget before it is
//! handed on; while the budget is spent the thread stops polling for records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use super::{Assignment, PartitionId, PositionLookup, Record, SourceControl, SourceEvent};
use crate::config::{KafkaSourceConfig, StartFrom};
use crate::ingest::budget::MemoryBudget;
use crate::telemetry::stats::IngestStats;

/// librdkafka properties sluice sets itself and refuses from the config.
pub const RESERVED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

/// Group settings for micro-batches; a source's `properties` override them.
///
/// - `cooperative-sticky`: a rebalance moves only the partitions that change
///   owner; the others keep consuming and committing.
/// - `session.timeout.ms` 30 s: a worker killed without leaving (or a static
///   member restarting) holds its partitions this long before they move; a
///   restart within it takes them back without any rebalance.
/// - `max.poll.interval.ms` 10 min: the consumer thread polls continuously,
///   but a revocation waits for the pipeline's commit (up to the shutdown
///   grace), and a slow object store must not make the member leave.
pub const GROUP_DEFAULTS: &[(&str, &str)] = &[
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("session.timeout.ms", "30000"),
    ("heartbeat.interval.ms", "3000"),
    ("max.poll.interval.ms", "600000"),
];

/// Records handed to the pipeline in one event at most.
const CHUNK_RECORDS: usize = 2048;
/// A partial chunk is handed on after this long.
const CHUNK_AGE: Duration = Duration::from_millis(50);

/// Errors starting a Kafka source.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    /// librdkafka rejected the configuration or subscription.
    #[error("source `{source_name}`: {error}")]
    Client {
        /// Source name.
        source_name: String,
        /// The client error (names the bad property).
        error: KafkaError,
    },
}

struct Shared {
    stop: AtomicBool,
    seeks: Mutex<Vec<(Arc<PartitionId>, i64)>>,
}

/// Handle to a running Kafka source.
pub struct KafkaSourceHandle {
    shared: Arc<Shared>,
}

impl SourceControl for KafkaSourceHandle {
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

struct SourceContext {
    source_name: String,
    /// Keep each record's key (change events).
    keep_keys: bool,
    start_from: StartFrom,
    grace: Duration,
    lookup: PositionLookup,
    runtime: tokio::runtime::Handle,
    tx: mpsc::Sender<SourceEvent>,
    budget: Arc<MemoryBudget>,
    shared: Arc<Shared>,
    pending: Mutex<Vec<Record>>,
    ids: Mutex<HashMap<(String, i32), Arc<PartitionId>>>,
    stats: Arc<IngestStats>,
}

impl SourceContext {
    fn partition_id(&self, topic: &str, partition: i32) -> Arc<PartitionId> {
        self.ids
            .lock()
            .expect("ids lock")
            .entry((topic.to_string(), partition))
            .or_insert_with(|| {
                Arc::new(PartitionId {
                    source: self.source_name.clone(),
                    stream: topic.to_string(),
                    partition: partition.to_string(),
                })
            })
            .clone()
    }

    fn send(&self, event: SourceEvent) -> bool {
        self.tx.blocking_send(event).is_ok()
    }

    fn flush_pending(&self) -> bool {
        let chunk = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        chunk.is_empty() || self.send(SourceEvent::Records(chunk))
    }

    fn recorded_positions(&self, app_ids: Vec<String>) -> Option<HashMap<String, i64>> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.runtime.block_on((self.lookup)(app_ids.clone())) {
                Ok(found) => return Some(found),
                Err(error) => {
                    tracing::warn!(source = %self.source_name, %error, "cannot read recorded positions; retrying");
                }
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return None;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let partitions: Vec<Arc<PartitionId>> = tpl
            .elements()
            .iter()
            .map(|e| self.partition_id(e.topic(), e.partition()))
            .collect();
        let app_ids = partitions.iter().map(|p| p.app_id()).collect();
        let Some(recorded) = self.recorded_positions(app_ids) else {
            return;
        };
        let mut assign = TopicPartitionList::new();
        let mut assignments = Vec::new();
        for (elem, partition) in tpl.elements().iter().zip(partitions) {
            let position = recorded.get(&partition.app_id()).copied();
            let offset = match (position, self.start_from) {
                (Some(p), _) => Offset::Offset(p + 1),
                (None, StartFrom::Earliest) => Offset::Beginning,
                (None, StartFrom::Latest) => Offset::End,
            };
            if let Err(error) = assign.add_partition_offset(elem.topic(), elem.partition(), offset)
            {
                tracing::error!(%partition, %error, "cannot set start offset");
            }
            tracing::info!(%partition, recorded = ?position, "partition assigned");
            assignments.push(Assignment {
                partition,
                recorded: position,
            });
        }
        self.send(SourceEvent::Assigned(assignments));
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(&assign),
            _ => consumer.assign(&assign),
        };
        if let Err(error) = result {
            tracing::error!(source = %self.source_name, %error, "assign failed");
        }
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let partitions: Vec<Arc<PartitionId>> = tpl
            .elements()
            .iter()
            .map(|e| self.partition_id(e.topic(), e.partition()))
            .collect();
        tracing::info!(source = %self.source_name, count = partitions.len(), "partitions revoked");
        if self.flush_pending() {
            let (done, wait) = std::sync::mpsc::channel();
            if self.send(SourceEvent::Revoked {
                partitions,
                done: Some(done),
            }) && wait.recv_timeout(self.grace).is_err()
            {
                tracing::warn!(source = %self.source_name, "pipeline did not commit revoked partitions in time; its commit will be fenced");
            }
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(error) = result {
            tracing::warn!(source = %self.source_name, %error, "unassign failed");
        }
    }
}

impl ClientContext for SourceContext {
    /// librdkafka's periodic statistics: the high watermark of every
    /// partition this consumer fetches, for lag metrics.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, detail) in &statistics.topics {
            for (partition, numbers) in &detail.partitions {
                if *partition < 0 || numbers.hi_offset < 0 {
                    continue;
                }
                let id = self.partition_id(topic, *partition);
                self.stats.high_watermark(&id.app_id(), numbers.hi_offset);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                tracing::error!(source = %self.source_name, error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// The librdkafka configuration for a source: passthrough properties plus sluice's own.
pub fn client_config(config: &KafkaSourceConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("queued.max.messages.kbytes", "16384")
        .set("client.id", format!("sluice-{}", config.name))
        // High watermarks for lag metrics (see `stats`).
        .set("statistics.interval.ms", "5000")
        // A broker holds a fetch of idle partitions this long at most
        // (librdkafka: 500ms): a partition assigned meanwhile (a new topic
        // of a pattern source, a rebalance) waits behind it, so its first
        // records come sooner; busy partitions are unaffected.
        .set("fetch.wait.max.ms", "100");
    for (key, value) in GROUP_DEFAULTS {
        client.set(*key, *value);
    }
    if let Some(id) = &config.instance_id {
        client.set("group.instance.id", id);
    }
    // If a recorded offset has left the broker's retention, resume from the
    // oldest retained record rather than silently jumping to the end.
    let reset = match config.start_from {
        StartFrom::Earliest => "earliest",
        StartFrom::Latest => "latest",
    };
    client.set("auto.offset.reset", reset);
    let refresh = config.metadata_refresh.map(|s| s.0).or(config
        .topic_pattern
        .is_some()
        .then_some(crate::config::defaults::PATTERN_METADATA_REFRESH));
    if let Some(refresh) = refresh {
        client.set(
            "topic.metadata.refresh.interval.ms",
            refresh.as_millis().max(1).to_string(),
        );
    }
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    // `"group.instance.id" = ""` turns static membership off.
    if client.get("group.instance.id") == Some("") {
        client.remove("group.instance.id");
    }
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    client
}

/// librdkafka takes a subscription starting with `^` as a regex.
pub fn subscription_pattern(pattern: &str) -> String {
    if pattern.starts_with('^') {
        pattern.to_string()
    } else {
        format!("^{pattern}")
    }
}

/// Subscribes and starts the consumer thread; events go to `tx`.
pub fn spawn(
    config: &KafkaSourceConfig,
    grace: Duration,
    lookup: PositionLookup,
    budget: Arc<MemoryBudget>,
    tx: mpsc::Sender<SourceEvent>,
    stats: Arc<IngestStats>,
) -> Result<Arc<KafkaSourceHandle>, KafkaSourceError> {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        seeks: Mutex::new(Vec::new()),
    });
    let context = SourceContext {
        source_name: config.name.clone(),
        keep_keys: config.format == crate::config::Format::Debezium,
        start_from: config.start_from,
        grace,
        lookup,
        runtime: tokio::runtime::Handle::current(),
        tx,
        budget,
        shared: shared.clone(),
        pending: Mutex::new(Vec::new()),
        ids: Mutex::new(HashMap::new()),
        stats,
    };
    let client_error = |error| KafkaSourceError::Client {
        source_name: config.name.clone(),
        error,
    };
    let consumer: BaseConsumer<SourceContext> = client_config(config)
        .create_with_context(context)
        .map_err(client_error)?;
    let pattern = config.topic_pattern.as_deref().map(subscription_pattern);
    let topics: Vec<&str> = match &pattern {
        Some(pattern) => vec![pattern.as_str()],
        None => config.topics.iter().map(String::as_str).collect(),
    };
    consumer.subscribe(&topics).map_err(client_error)?;
    std::thread::Builder::new()
        .name(format!("kafka-{}", config.name))
        .spawn(move || run_guarded(consumer))
        .expect("spawn kafka source thread");
    Ok(Arc::new(KafkaSourceHandle { shared }))
}

/// Runs the poll loop, then closes the consumer. A panic in the loop is
/// caught and reported to the pipelines as the source's failure: they
/// commit what they were handed and the worker stops with the message.
/// Uncaught, the thread's end would close the channel like a finished
/// source's, and the worker would stop without an error.
fn run_guarded(consumer: BaseConsumer<SourceContext>) {
    let ctx = consumer.context().clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_loop(&consumer)));
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        tracing::error!(source = %ctx.source_name, %message, "the Kafka source thread panicked; stopping the source");
        ctx.shared.stop.store(true, Ordering::Relaxed);
        ctx.flush_pending();
        ctx.send(SourceEvent::Failed(format!(
            "the Kafka source `{}` stopped on an internal error: {message}",
            ctx.source_name
        )));
    }
    // Dropping the consumer leaves the group; the revoke callback lets the
    // pipeline commit what it holds before the partitions move.
    drop(consumer);
}

/// Sources whose poll loop panics at its next record. For tests of the guard.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Whether any panic was asked for: the poll loop reads only this flag per
/// record, never the lock.
static PANIC_ASKED: AtomicBool = AtomicBool::new(false);

/// Makes the poll loop of source `name` panic when it next receives a
/// record. For tests.
#[doc(hidden)]
pub fn panic_at_next_record(name: &str) {
    PANICS.lock().expect("panic lock").push(name.to_string());
    PANIC_ASKED.store(true, Ordering::Relaxed);
}

fn injected_panic(name: &str) -> bool {
    if !PANIC_ASKED.load(Ordering::Relaxed) {
        return false;
    }
    let mut panics = PANICS.lock().expect("panic lock");
    let found = panics.iter().position(|n| n == name);
    found.map(|i| panics.remove(i)).is_some()
}

fn poll_loop(consumer: &BaseConsumer<SourceContext>) {
    let ctx = consumer.context().clone();
    let mut oldest: Option<Instant> = None;
    let mut seeks = Vec::new();
    while !ctx.shared.stop.load(Ordering::Relaxed) {
        if ctx.tx.is_closed() {
            // The pipeline is gone (it failed or was dropped): leave the
            // group so the partitions move on rather than idle here.
            tracing::warn!(source = %ctx.source_name, "pipeline gone; leaving the group");
            return;
        }
        apply_seeks(consumer, &ctx, &mut seeks);
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                if injected_panic(&ctx.source_name) {
                    panic!("injected for a test at offset {}", message.offset());
                }
                let record = Record {
                    partition: ctx.partition_id(message.topic(), message.partition()),
                    position: message.offset(),
                    payload: message
                        .payload()
                        .map(Bytes::copy_from_slice)
                        .unwrap_or_default(),
                    timestamp_ms: message.timestamp().to_millis(),
                    key: ctx
                        .keep_keys
                        .then(|| message.key().map(Bytes::copy_from_slice))
                        .flatten(),
                };
                if !ctx.budget.try_reserve(record.charge()) {
                    // Hand over the records held first: the budget may be
                    // spent on exactly those, and the pipeline can only
                    // flush (and free them) once it has them.
                    oldest = None;
                    if !ctx.flush_pending() {
                        return;
                    }
                    if !ctx
                        .budget
                        .reserve_blocking(record.charge(), &ctx.shared.stop)
                    {
                        break;
                    }
                }
                let full = {
                    let mut pending = ctx.pending.lock().expect("pending lock");
                    pending.push(record);
                    pending.len() >= CHUNK_RECORDS
                };
                oldest.get_or_insert_with(Instant::now);
                if full && !ctx.flush_pending() {
                    return;
                }
            }
            Some(Err(error)) => {
                tracing::warn!(source = %ctx.source_name, %error, "kafka consumer error");
            }
            None => {}
        }
        if oldest.is_some_and(|t| t.elapsed() >= CHUNK_AGE) {
            oldest = None;
            if !ctx.flush_pending() {
                return;
            }
        }
    }
    ctx.flush_pending();
}

/// A seek the pipeline asked for that has not taken effect yet.
struct PendingSeek {
    partition: Arc<PartitionId>,
    next: i64,
    failures: u32,
    not_before: Instant,
}

/// Carries out the seeks the pipeline asked for. A seek that fails is
/// retried with backoff while the partition stays assigned, and is reported
/// done ([`SourceEvent::Reseeked`]) only once it happened: until then the
/// pipeline discards the partition's records, so the consumer can never run
/// on past a dropped batch's range. A partition no longer assigned needs no
/// seek: its next assignment starts at the table's position anyway.
fn apply_seeks(
    consumer: &BaseConsumer<SourceContext>,
    ctx: &SourceContext,
    pending: &mut Vec<PendingSeek>,
) {
    let asked = std::mem::take(&mut *ctx.shared.seeks.lock().expect("seek lock"));
    for (partition, next) in asked {
        pending.retain(|p| p.partition != partition);
        pending.push(PendingSeek {
            partition,
            next,
            failures: 0,
            not_before: Instant::now(),
        });
    }
    if !pending.iter().any(|p| p.not_before <= Instant::now()) {
        return;
    }
    if !ctx.flush_pending() {
        return;
    }
    let assignment = consumer.assignment().ok();
    pending.retain_mut(|seek| {
        if seek.not_before > Instant::now() {
            return true;
        }
        let Ok(number) = seek.partition.partition.parse::<i32>() else {
            return false;
        };
        let assigned = assignment.as_ref().is_none_or(|tpl| {
            tpl.find_partition(&seek.partition.stream, number)
                .is_some()
        });
        if !assigned {
            tracing::info!(partition = %seek.partition, "seek dropped: the partition is no longer assigned");
            return false;
        }
        let result = injected_seek_fault(&seek.partition.stream).map_or_else(
            || {
                consumer.seek(
                    &seek.partition.stream,
                    number,
                    Offset::Offset(seek.next),
                    Duration::from_secs(10),
                )
            },
            Err,
        );
        match result {
            Ok(()) => {
                tracing::info!(partition = %seek.partition, next = seek.next, failures = seek.failures, "re-seeked to the table's position");
                ctx.send(SourceEvent::Reseeked(seek.partition.clone()));
                false
            }
            Err(error) => {
                seek.failures += 1;
                let backoff = Duration::from_millis(100 * 2u64.pow(seek.failures.min(6)));
                seek.not_before = Instant::now() + backoff;
                crate::telemetry::metrics::seek_failed(&seek.partition.app_id());
                tracing::warn!(partition = %seek.partition, next = seek.next, failures = seek.failures,
                    retry_in = ?backoff, %error, "seek failed; its records are discarded until it succeeds");
                true
            }
        }
    });
}

/// Seeks to fail on purpose, per topic (tests).
static SEEK_FAULTS: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

/// Makes the next `count` seeks of partitions of `topic` fail, as a broken
/// connection or a timed-out seek would. For tests.
#[doc(hidden)]
pub fn fail_next_seeks(topic: &str, count: u32) {
    let mut faults = SEEK_FAULTS.lock().expect("seek faults lock");
    faults.retain(|(t, _)| t != topic);
    faults.push((topic.to_string(), count));
}

fn injected_seek_fault(topic: &str) -> Option<KafkaError> {
    let mut faults = SEEK_FAULTS.lock().expect("seek faults lock");
    let (_, left) = faults
        .iter_mut()
        .find(|(t, left)| t == topic && *left > 0)?;
    *left -= 1;
    Some(KafkaError::Seek("injected seek failure".into()))
}
