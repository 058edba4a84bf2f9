//! Prometheus metrics: the worker's counters rendered in the text
//! exposition format (version 0.0.4) for `sluice serve`'s `/metrics`.
//!
//! Pipeline counters, commit latency, partition lag and freshness live in
//! [`IngestStats`]; what happens outside a pipeline (commit retries in the
//! commit path, maintenance and erasure runs) is counted here, process-wide.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::stats::{IngestStats, COMMIT_BUCKETS};

/// Commit attempts that conflicted with a concurrent commit and were retried.
pub static COMMIT_RETRIES: AtomicU64 = AtomicU64::new(0);

/// Commits that found the table moved on by concurrent writers and landed
/// after delta-rs's conflict check rebased them (no retry of ours needed).
pub static COMMIT_REBASES: AtomicU64 = AtomicU64::new(0);

/// Rows deleted by erasure runs of this process.
pub static ROWS_ERASED: AtomicU64 = AtomicU64::new(0);

/// When ingestion last read the erasure ledger successfully (ms since the
/// epoch; 0: never).
pub static LEDGER_READ_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Labelled counters of rare events: (metric, label value) -> count.
static EVENTS: Mutex<BTreeMap<(&'static str, String), u64>> = Mutex::new(BTreeMap::new());

/// The rare events counted in [`EVENTS`]: (metric, label name, help).
const EVENT_METRICS: [(&str, &str, &str); 13] = [
    (
        "sluice_erasure_purges_held_total",
        "table",
        "Purges that found a key still present after vacuum and log cut; the request stays deleted and is purged again next run.",
    ),
    (
        "sluice_erasure_ledger_read_failures_total",
        "process",
        "Failed reads of the erasure ledger by ingestion (the last keys read stay in force).",
    ),
    (
        "sluice_registry_unavailable_total",
        "registry",
        "Schema-registry requests that found it unavailable; consumption waits and retries.",
    ),
    (
        "sluice_schemas_refused_total",
        "table",
        "Writer schemas refused because they change a column in a way Delta readers cannot take (their records are dead-lettered).",
    ),
    (
        "sluice_kafka_seek_failures_total",
        "partition",
        "Kafka seeks to a table's position that failed and are retried (the partition's records are discarded meanwhile).",
    ),
    (
        "sluice_bigquery_check_failures_total",
        "table",
        "Maintenance rounds that found the table failing `sluice check --for bigquery` (see the warning in the log).",
    ),
    (
        "sluice_topics_refused_total",
        "topic",
        "Topics a pattern source found that no table template takes or whose schema cannot be resolved (their records are not ingested; see `sluice catalog`).",
    ),
    (
        "sluice_merge_files_rewritten_total",
        "table",
        "Files a mirror table's merges rewrote without the rows they replaced.",
    ),
    (
        "sluice_merge_bytes_rewritten_total",
        "table",
        "Bytes of the files a mirror table's merges rewrote.",
    ),
    (
        "sluice_merge_keys_total",
        "table",
        "Primary keys a mirror table's merges applied (after collapsing each batch by key).",
    ),
    (
        "sluice_merge_stale_total",
        "table",
        "Keys whose mutation a merge dropped because the table already held that position or a later one (replays).",
    ),
    (
        "sluice_tables_created_total",
        "table",
        "Tables a pattern source's templates made for new topics (or opened when another worker made them first).",
    ),
    (
        "sluice_merge_files_marked_total",
        "table",
        "Files a mirror table's merges kept, marking the rows they replaced in a deletion vector.",
    ),
];

fn count_event(metric: &'static str, label: &str) {
    count_events(metric, label, 1);
}

fn count_events(metric: &'static str, label: &str, n: u64) {
    *EVENTS
        .lock()
        .expect("events lock")
        .entry((metric, label.to_string()))
        .or_default() += n;
}

/// A merge into the mirror table `table` committed.
pub fn merged(table: &str, summary: &crate::table::lineage::MergeSummary) {
    count_events(EVENT_METRICS[7].0, table, summary.files_rewritten);
    count_events(EVENT_METRICS[8].0, table, summary.bytes_rewritten);
    count_events(EVENT_METRICS[9].0, table, summary.keys - summary.stale);
    count_events(EVENT_METRICS[10].0, table, summary.stale);
    count_events(EVENT_METRICS[12].0, table, summary.files_marked);
}

/// A purge of `table` held a request back: its key was still found.
pub fn purge_held(table: &str) {
    count_event(EVENT_METRICS[0].0, table);
}

/// Ingestion could not read the erasure ledger.
pub fn ledger_read_failed() {
    count_event(EVENT_METRICS[1].0, "ingest");
}

/// The schema registry at `url` did not answer.
pub fn registry_unavailable(url: &str) {
    count_event(EVENT_METRICS[2].0, url);
}

/// A writer schema was refused for `table`.
pub fn schema_refused(table: &str) {
    count_event(EVENT_METRICS[3].0, table);
}

/// A Kafka seek of `partition` failed.
pub fn seek_failed(partition: &str) {
    count_event(EVENT_METRICS[4].0, partition);
}

/// A pattern source refused `topic`.
pub fn topic_refused(topic: &str) {
    count_event(EVENT_METRICS[6].0, topic);
}

/// A template's table started taking a topic's records.
pub fn table_started(table: &str) {
    count_event(EVENT_METRICS[11].0, table);
}

/// A maintenance round found `table` failing `check --for bigquery`.
pub fn bigquery_check_failed(table: &str) {
    count_event(EVENT_METRICS[5].0, table);
}

/// (kind, table, outcome) -> (runs, seconds).
type Runs = BTreeMap<(String, String, &'static str), (u64, f64)>;

static RUNS: Mutex<Runs> = Mutex::new(BTreeMap::new());

/// Records one background run (`kind`: `maintenance` or `erasure`).
pub fn record_run(kind: &str, table: &str, ok: bool, elapsed: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    let mut runs = RUNS.lock().expect("runs lock");
    let entry = runs
        .entry((kind.to_string(), table.to_string(), outcome))
        .or_default();
    entry.0 += 1;
    entry.1 += elapsed.as_secs_f64();
}

/// What `/metrics` shows besides the counters.
pub struct Gauges {
    /// Payload bytes buffered now.
    pub buffered_bytes: u64,
    /// The memory budget.
    pub budget_bytes: u64,
    /// Ready to serve (`/readyz`).
    pub ready: bool,
    /// Now, in ms since the epoch (for lag and freshness in seconds).
    pub now_ms: i64,
}

struct Out(String);

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.0, "{name}");
        if !labels.is_empty() {
            let rendered: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", rendered.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric in the Prometheus text format.
pub fn render(stats: &IngestStats, gauges: &Gauges) -> String {
    let s = stats.snapshot();
    let mut out = Out(String::new());
    let counters = [
        (
            "sluice_records_received_total",
            "Records read from sources and accepted into a batch.",
            s.received,
        ),
        (
            "sluice_records_committed_total",
            "Rows committed to data tables.",
            s.committed,
        ),
        (
            "sluice_records_dead_lettered_total",
            "Records committed to dead-letter tables.",
            s.dead_lettered,
        ),
        (
            "sluice_records_suppressed_total",
            "Records dropped because their key is under an erasure request.",
            s.suppressed,
        ),
        (
            "sluice_records_discarded_total",
            "Records dropped before batching (already committed, revoked, awaiting a seek).",
            s.discarded,
        ),
        (
            "sluice_bytes_received_total",
            "Payload bytes accepted from sources.",
            stats.bytes_received(),
        ),
        (
            "sluice_bytes_written_total",
            "Bytes of data files committed.",
            s.bytes_written,
        ),
        (
            "sluice_files_written_total",
            "Data files committed.",
            s.files,
        ),
        ("sluice_commits_total", "Data commits made.", s.commits),
        (
            "sluice_batches_fenced_total",
            "Batches dropped because another worker had moved a partition on.",
            s.fenced,
        ),
        (
            "sluice_commit_retries_total",
            "Commit attempts that conflicted with a concurrent commit and were retried.",
            COMMIT_RETRIES.load(Ordering::Relaxed),
        ),
        (
            "sluice_commit_rebases_total",
            "Commits that found the table moved on by a concurrent writer and were rebased over it.",
            COMMIT_REBASES.load(Ordering::Relaxed),
        ),
        (
            "sluice_erased_rows_total",
            "Rows deleted by erasure runs of this process.",
            ROWS_ERASED.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        out.single(name, "counter", help, value);
    }

    let (buckets, count, sum) = stats.commit_seconds().read();
    let name = "sluice_commit_duration_seconds";
    out.header(
        name,
        "histogram",
        "Time from the start of a flush to its commit.",
    );
    for (bound, cumulative) in COMMIT_BUCKETS.iter().zip(&buckets) {
        out.sample(
            &format!("{name}_bucket"),
            &[("le", &bound.to_string())],
            cumulative,
        );
    }
    out.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count);
    out.sample(&format!("{name}_sum"), &[], sum);
    out.sample(&format!("{name}_count"), &[], count);

    out.single(
        "sluice_buffered_bytes",
        "gauge",
        "Payload bytes buffered in open batches.",
        gauges.buffered_bytes,
    );
    out.single(
        "sluice_memory_budget_bytes",
        "gauge",
        "The worker's buffer budget.",
        gauges.budget_bytes,
    );
    out.single(
        "sluice_ready",
        "gauge",
        "1 when the worker is assigned and committing (/readyz).",
        u8::from(gauges.ready),
    );
    out.single(
        "sluice_last_committed_version",
        "gauge",
        "Latest data-table version committed by this worker.",
        s.last_version,
    );

    let partitions = stats.partitions();
    out.header(
        "sluice_partition_committed_position",
        "gauge",
        "Last source position committed, per partition held.",
    );
    for (app_id, p) in &partitions {
        if let Some(committed) = p.committed {
            out.sample(
                "sluice_partition_committed_position",
                &[("table", &p.table), ("partition", app_id)],
                committed,
            );
        }
    }
    out.header(
        "sluice_consumer_lag_records",
        "gauge",
        "Records in the source not yet committed, per partition held.",
    );
    for (app_id, p) in &partitions {
        if let Some(lag) = p.lag_records() {
            out.sample(
                "sluice_consumer_lag_records",
                &[("table", &p.table), ("partition", app_id)],
                lag,
            );
        }
    }
    out.header(
        "sluice_consumer_lag_seconds",
        "gauge",
        "Age of the newest committed record while records are waiting, or how far the reader is behind the source's tip if that is more (0 when caught up).",
    );
    for (app_id, p) in &partitions {
        let Some(lag) = p.lag_records() else { continue };
        let behind = p.behind_ms.unwrap_or(0) as f64 / 1000.0;
        let waiting = match (lag, p.newest_event_ms) {
            (0, _) => 0.0,
            (_, Some(newest)) => ((gauges.now_ms - newest).max(0)) as f64 / 1000.0,
            (_, None) if p.behind_ms.is_some() => 0.0,
            (_, None) => continue,
        };
        let seconds = waiting.max(behind);
        out.sample(
            "sluice_consumer_lag_seconds",
            &[("table", &p.table), ("partition", app_id)],
            seconds,
        );
    }
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    for p in partitions.values() {
        if let Some(ms) = p.newest_event_ms {
            let entry = newest.entry(p.table.as_str()).or_insert(ms);
            *entry = (*entry).max(ms);
        }
    }
    out.header(
        "sluice_freshness_seconds",
        "gauge",
        "Age of the newest committed event (by source time), per table.",
    );
    for (table, ms) in newest {
        out.sample(
            "sluice_freshness_seconds",
            &[("table", table)],
            ((gauges.now_ms - ms).max(0)) as f64 / 1000.0,
        );
    }

    out.header(
        "sluice_unknown_fields_total",
        "counter",
        "Records holding a top-level field the table does not have, per field (JSON).",
    );
    for ((table, field), count) in stats.unknown_field_counts() {
        out.sample(
            "sluice_unknown_fields_total",
            &[("table", &table), ("field", &field)],
            count,
        );
    }
    let read_ms = LEDGER_READ_MS.load(Ordering::Relaxed);
    if read_ms > 0 {
        out.single(
            "sluice_erasure_keys_age_seconds",
            "gauge",
            "Time since ingestion last read the erasure ledger (the keys it suppresses are this old).",
            ((gauges.now_ms - read_ms).max(0)) as f64 / 1000.0,
        );
    }
    let events = EVENTS.lock().expect("events lock").clone();
    for (metric, label, help) in EVENT_METRICS {
        out.header(metric, "counter", help);
        for ((_, value), count) in events.iter().filter(|((m, _), _)| *m == metric) {
            out.sample(metric, &[(label, value)], count);
        }
    }

    let runs = RUNS.lock().expect("runs lock").clone();
    out.header(
        "sluice_background_runs_total",
        "counter",
        "Maintenance and erasure runs, by outcome.",
    );
    for ((kind, table, outcome), (count, _)) in &runs {
        out.sample(
            "sluice_background_runs_total",
            &[("kind", kind), ("table", table), ("outcome", outcome)],
            count,
        );
    }
    out.header(
        "sluice_background_run_seconds_total",
        "counter",
        "Time spent in maintenance and erasure runs.",
    );
    for ((kind, table, outcome), (_, seconds)) in &runs {
        out.sample(
            "sluice_background_run_seconds_total",
            &[("kind", kind), ("table", table), ("outcome", outcome)],
            seconds,
        );
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_headers_samples_and_escaped_labels() {
        let stats = IngestStats::new();
        stats.partition_assigned("rides", "sluice/k/t\"x/0", Some(9));
        stats.high_watermark("sluice/k/t\"x/0", 15);
        let text = render(
            &stats,
            &Gauges {
                buffered_bytes: 3,
                budget_bytes: 10,
                ready: true,
                now_ms: 0,
            },
        );
        assert!(text.contains(
            "# TYPE sluice_records_received_total counter\nsluice_records_received_total 0\n"
        ));
        assert!(
            text.contains(
                r#"sluice_consumer_lag_records{table="rides",partition="sluice/k/t\"x/0"} 5"#
            ),
            "{text}"
        );
        assert!(text.contains("sluice_commit_duration_seconds_bucket{le=\"+Inf\"} 0"));
        assert!(text.contains("sluice_ready 1"));
    }
}
