//! The memory budget holds: a backfill far larger than the budget completes,
//! flushing early instead of buffering past the budget.

use std::io::Write;

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
    let rows: usize = kernel_read(&lake.table("rides"))
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 40_000);
}
