//! Bad input goes to the dead-letter table with its coordinates; the good
//! records around it all land; re-running a backfill adds nothing.

use std::path::Path;

use arrow::array::{Array, Float64Array, TimestampMicrosecondArray};

use crate::common::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/events/mixed.ndjson");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_dead_lettered_with_coordinates_and_good_ones_kept() {
    let lake = Lake::new();
    let config = file_config(&lake, Path::new(FIXTURE), "events", "", EVENT_COLUMNS);
    let stats = ingest_to_end(&config).await;
    assert_eq!((stats.committed, stats.dead_lettered), (5, 7), "{stats:?}");

    let rows = kernel_read(&lake.table("events")).await;
    let mut ids = strings(&rows, "event_id");
    ids.sort();
    assert_eq!(ids, ["ok-1", "ok-2", "ok-3", "ok-4", "ok-5"]);

    // Values, widening and timestamp forms, row by row.
    let mut by_id = std::collections::BTreeMap::new();
    for batch in &rows {
        let ids = strings(std::slice::from_ref(batch), "event_id");
        let amount = batch
            .column_by_name("amount")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .clone();
        let time = batch
            .column_by_name("event_time")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap()
            .clone();
        for (i, id) in ids.into_iter().enumerate() {
            let amount = (!amount.is_null(i)).then(|| amount.value(i));
            by_id.insert(id, (amount, time.value(i)));
        }
    }
    const NOON: i64 = 1_714_564_800_000_000;
    assert_eq!(by_id["ok-1"], (Some(10.5), NOON));
    assert_eq!(
        by_id["ok-2"],
        (Some(3.0), NOON),
        "integer widened to double; epoch seconds"
    );
    assert_eq!(by_id["ok-3"], (None, NOON + 123_000), "epoch millis");
    assert_eq!(
        by_id["ok-4"],
        (Some(-1.25), NOON + 12 * 3_600_000_000 + 1),
        "micro precision"
    );
    assert_eq!(
        by_id["ok-5"].1,
        NOON + 12 * 3_600_000_000 - 1_000_000,
        "no offset means UTC"
    );

    let dead = kernel_read(&lake.table("events_dead_letters")).await;
    let mut positions: Vec<i64> = strings(&dead, "position")
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    positions.sort();
    assert_eq!(
        positions,
        [1, 4, 5, 7, 8, 9, 11],
        "0-based line numbers of the bad lines"
    );
    assert!(strings(&dead, "partition")
        .iter()
        .all(|p| p == "mixed.ndjson"));
    assert!(strings(&dead, "stream").iter().all(|s| s == "file"));
    let errors = strings(&dead, "error");
    assert!(errors.iter().all(|e| !e.is_empty()));
    let texts = strings(&dead, "payload_text");
    let time_error = texts
        .iter()
        .zip(&errors)
        .find(|(t, _)| t.contains("last tuesday"))
        .map(|(_, e)| e.clone())
        .expect("the bad timestamp is dead-lettered with its raw text");
    assert!(
        time_error.contains("event_time") && time_error.contains("last tuesday"),
        "{time_error}"
    );
    assert!(texts
        .iter()
        .any(|t| t == r#"{"event_id":"bad-truncated","user_id":"u-2","amount":"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerunning_a_backfill_adds_nothing() {
    let lake = Lake::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(FIXTURE, dir.path().join("a.ndjson")).unwrap();
    // The same lines again, gzipped, as a second file.
    let gz = std::fs::File::create(dir.path().join("b.ndjson.gz")).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(gz, flate2::Compression::fast());
    std::io::copy(&mut std::fs::File::open(FIXTURE).unwrap(), &mut encoder).unwrap();
    encoder.finish().unwrap();

    let config = file_config(&lake, dir.path(), "events", "", EVENT_COLUMNS);
    let first = ingest_to_end(&config).await;
    assert_eq!((first.committed, first.dead_lettered), (10, 14));
    let again = ingest_to_end(&config).await;
    assert_eq!((again.received, again.commits), (0, 0), "{again:?}");
    let rows: usize = kernel_read(&lake.table("events"))
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let dead: usize = kernel_read(&lake.table("events_dead_letters"))
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!((rows, dead), (10, 14));
}
