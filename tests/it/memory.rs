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
    let kafka = EmbeddedKafka::start_with(&[("busy".into(), 1), ("quiet".into(), 1)]).unwrap();
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
