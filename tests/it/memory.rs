//! The memory budget holds: a backfill far larger than the budget completes,
//! flushing early instead of buffering past the budget; under pressure only
//! the tables that hold the memory flush.

use std::io::Write;
use std::time::Duration;

use sluice::demo::broker::{self, EmbeddedKafka};
use sluice::demo::events::{RideEvents, RIDES_TABLE_COLUMNS};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_bytes_never_exceed_the_budget() {
    let lake = Lake::new();
    let input = lake.dir.path().join("big.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let mut events = RideEvents::new(9, 1000, 0.0);
    let mut bytes = 0;
    let mut largest = 0;
    for _ in 0..40_000 {
        let payload = events.next_event().payload;
        bytes += payload.len();
        largest = largest.max(payload.len());
        out.write_all(&payload).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
    drop(out);

    let budget = 2u64 << 20;
    let batching =
        format!("memory_budget = \"{budget}\"\nmax_latency = \"1h\"\nmax_bytes = \"1GiB\"");
    let config = file_config(&lake, &input, "rides", &batching, RIDES_TABLE_COLUMNS);
    let run = Running::start(&config);
    let (stats, budget_used) = (run.stats.clone(), run.budget.clone());
    run.finish().await;

    let high_water = budget_used.high_water() as u64;
    let per_record_overhead = 96;
    assert!(
        high_water <= budget + (largest + per_record_overhead) as u64,
        "buffered {high_water} bytes with a budget of {budget}"
    );
    assert_eq!(
        budget_used.used(),
        0,
        "everything released after the last commit"
    );
    let s = stats.snapshot();
    assert_eq!(s.committed, 40_000);
    assert!(
        s.commits as usize >= bytes / budget as usize,
        "{} commits for {bytes} bytes under a {budget}-byte budget",
        s.commits
    );
    eprintln!(
        "memory budget {budget}: high water {high_water}, {} commits for {bytes} input bytes",
        s.commits
    );
    let rows = kernel_rows(&lake.table("rides")).await;
    assert_eq!(rows, 40_000);
}

/// Under pressure only the tables holding the memory flush early: a quiet
/// table beside a busy one on the same worker keeps its few records until
/// its own latency (here: shutdown) instead of committing them at every
/// pressure event the busy table causes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_pressure_a_quiet_table_is_not_flushed_for_a_busy_ones_memory() {
    let lake = Lake::new();
    // Four partitions: the embedded broker keeps 5 MB of each, and the
    // busy records (8.8 MB) must all stay until read, however far behind
    // a loaded machine leaves the consumer.
    let kafka = EmbeddedKafka::start_with(&[("busy".into(), 4), ("quiet".into(), 1)]).unwrap();
    let producer = kafka.producer().unwrap();
    let mut events = RideEvents::new(11, 1000, 0.0);
    for _ in 0..10 {
        broker::send(&producer, "quiet", "", &events.next_event().payload).unwrap();
    }
    broker::flush(&producer).unwrap();
    let mut text = format!(
        "[lake]\nroot = \"{}\"\n\n[batching]\nmemory_budget = \"2MiB\"\nmax_latency = \"1h\"\nmax_bytes = \"1GiB\"\n",
        lake.root()
    );
    for name in ["busy", "quiet"] {
        text.push_str(&format!(
            "\n[[sources]]\nkind = \"kafka\"\nname = \"{name}\"\nbrokers = \"{}\"\ntopics = [\"{name}\"]\ngroup_id = \"memory-{name}\"\n\n[[tables]]\nname = \"{name}\"\nsource = \"{name}\"\n{RIDES_TABLE_COLUMNS}\n",
            kafka.bootstrap_servers()
        ));
    }
    let config = parse_valid(&text);
    let run = Running::start(&config);
    run.wait_for(Duration::from_secs(60), "the quiet table's records", |s| {
        s.received >= 10
    })
    .await;
    let busy = 20_000u64;
    let mut bytes = 0;
    for _ in 0..busy {
        let payload = events.next_event().payload;
        bytes += payload.len() as u64;
        broker::send(&producer, "busy", "", &payload).unwrap();
    }
    broker::flush(&producer).unwrap();
    // The busy table flushes for memory while its records come in; what
    // it holds after the last one waits for its latency.
    run.wait_for(Duration::from_secs(120), "the busy table's records", |s| {
        s.received >= busy + 10 && s.commits >= bytes / (2 << 20) - 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy_commits = commits_with_operation(&lake.table("busy"), "STREAMING UPDATE").len();
    assert!(
        busy_commits as u64 >= bytes / (2 << 20) - 1,
        "{busy_commits} commits of {bytes} bytes under a 2 MiB budget"
    );
    assert!(
        commits_with_operation(&lake.table("quiet"), "STREAMING UPDATE").is_empty(),
        "the quiet table was flushed for memory it did not hold"
    );
    let stats = run.stop().await;
    assert_eq!(stats.committed, busy + 10);
    assert_eq!(
        commits_with_operation(&lake.table("quiet"), "STREAMING UPDATE").len(),
        1,
        "the quiet table commits once, on shutdown"
    );
    let rows = kernel_rows(&lake.table("quiet")).await;
    assert_eq!(rows, 10);
}

/// A source hands over the records it holds before it waits for memory:
/// with a budget smaller than a source's chunk (2,048 records), the budget
/// fills while every reserved record is still in the source's hands, and
/// only once the table has them can it flush and free the memory. Kafka
/// and file sources both drain a backlog many budgets large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_smaller_than_a_chunk_still_drains() {
    let records = 20_000u64;
    // The smallest budget allowed: ~1,960 demo events' charge.
    let budget = "1MiB";
    let mut events = RideEvents::new(13, 1000, 0.0);
    let payloads: Vec<Vec<u8>> = (0..records).map(|_| events.next_event().payload).collect();
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    assert!(bytes > 8 << 20, "the backlog is many budgets large");

    let lake = Lake::new();
    // Four partitions: the embedded broker keeps 5 MB of each.
    let kafka = EmbeddedKafka::start_with(&[("backlog".into(), 4)]).unwrap();
    let producer = kafka.producer().unwrap();
    for (n, payload) in payloads.iter().enumerate() {
        broker::send(&producer, "backlog", &n.to_string(), payload).unwrap();
    }
    broker::flush(&producer).unwrap();
    let config = parse_valid(&format!(
        "[lake]\nroot = \"{}\"\n\n[batching]\nmemory_budget = \"{budget}\"\nmax_latency = \"1h\"\n\n[[sources]]\nkind = \"kafka\"\nname = \"k\"\nbrokers = \"{}\"\ntopics = [\"backlog\"]\ngroup_id = \"memory-backlog\"\n\n[[tables]]\nname = \"rides\"\nsource = \"k\"\n{RIDES_TABLE_COLUMNS}\n",
        lake.root(),
        kafka.bootstrap_servers()
    ));
    let run = Running::start(&config);
    // What the table holds after the last record waits for its latency
    // (here: the stop); everything before it was flushed for memory.
    run.wait_for(Duration::from_secs(60), "the backlog through Kafka", |s| {
        s.received >= records && s.commits >= 8
    })
    .await;
    let stats = run.stop().await;
    assert_eq!(stats.committed, records);
    assert_eq!(kernel_rows(&lake.table("rides")).await, records as usize);

    let lake = Lake::new();
    let input = lake.dir.path().join("backlog.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for payload in &payloads {
        out.write_all(payload).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let batching = format!("memory_budget = \"{budget}\"\nmax_latency = \"1h\"");
    let config = file_config(&lake, &input, "rides", &batching, RIDES_TABLE_COLUMNS);
    let run = Running::start(&config);
    run.wait_for(Duration::from_secs(60), "the backlog from a file", |s| {
        s.committed >= records
    })
    .await;
    run.stop().await;
    assert_eq!(kernel_rows(&lake.table("rides")).await, records as usize);
}
