//! A worker away longer than a Kinesis stream's retention finds its
//! recorded position trimmed (kinesalite's clock is moved a day ahead, and
//! kinesalite drops the records older than the retention). With
//! `on_trimmed = "fail"` the pipeline stops naming the shard and the lost
//! range and writes nothing; with `"skip"` it resumes at the oldest
//! retained record, every retained record lands once, and `sluice status`
//! shows the partition as not contiguous, with the gap.

use std::time::Duration;

use crate::common::*;
use crate::kinesis::{create_stream, orders_config, put_events, Kinesalite};

fn config(
    lake: &Lake,
    kinesis: &Kinesalite,
    stream: &str,
    on_trimmed: &str,
) -> sluice::config::Config {
    orders_config(
        lake,
        kinesis,
        stream,
        &format!("on_trimmed = \"{on_trimmed}\""),
        "",
    )
}

/// A first run with `fail` that commits the `rows` records already put;
/// the table's URL.
async fn first_run(lake: &Lake, kinesis: &Kinesalite, stream: &str, rows: usize) -> url::Url {
    let table = lake.table("orders");
    let running = Running::start(&config(lake, kinesis, stream, "fail"));
    let url = loop {
        if let Ok(url) = sluice::table::resolve_existing(table.to_str().unwrap()) {
            break url;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_for_rows(&url, &no_options(), rows as u64, Duration::from_secs(60)).await;
    running.stop().await;
    url
}

/// A run with `fail` that must stop by itself with an error; the error.
async fn failed_run(lake: &Lake, kinesis: &Kinesalite, stream: &str) -> String {
    let running = Running::start(&config(lake, kinesis, stream, "fail"));
    tokio::time::timeout(Duration::from_secs(60), running.task)
        .await
        .expect("the pipeline stops by itself")
        .unwrap()
        .expect_err("a trimmed position fails the pipeline")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_position_fails_or_skips_with_the_gap_in_the_lineage() {
    test_log();
    let kinesis = Kinesalite::start();
    let client = kinesis.client();
    let stream = "trimmed";
    create_stream(&client, stream, 1).await;
    let mut expected = put_events(&client, stream, "read", 5, 2, 0).await;
    let lake = Lake::new();
    let table = lake.table("orders");

    // The first run reads and commits the first records.
    let url = first_run(&lake, &kinesis, stream, expected.len()).await;

    // While no worker runs, more records arrive, and a day passes: they
    // and the committed ones are trimmed. Then new records arrive.
    let lost = put_events(&client, stream, "lost", 5, 2, 2).await;
    kinesis.age_past_retention().await;
    let retained = put_events(&client, stream, "kept", 5, 2, 4).await;

    // `fail`: the pipeline stops, naming the shard and the range.
    let error = failed_run(&lake, &kinesis, stream).await;
    assert!(
        error.contains("shardId-000000000000")
            && error.contains("older than the stream's retention")
            && error.contains("may be lost")
            && error.contains("on_trimmed = \"skip\""),
        "{error}"
    );
    assert_eq!(
        strings(&kernel_read(&table).await, "event_id").len(),
        expected.len()
    );

    // `skip`: resumes at the oldest retained record, and says so.
    let running = Running::start(&config(&lake, &kinesis, stream, "skip"));
    expected.extend(retained);
    wait_for_rows(
        &url,
        &no_options(),
        expected.len() as u64,
        Duration::from_secs(60),
    )
    .await;
    running.stop().await;
    let ids = strings(&kernel_read(&table).await, "event_id");
    assert!(
        lost.iter().all(|id| !ids.contains(id)),
        "trimmed records cannot be read"
    );
    assert_exactly_once(ids, &expected);

    let status = sluice::status::table_status(&url, &Default::default(), 1)
        .await
        .unwrap();
    let shard = &status.partitions[0];
    assert!(!shard.contiguous, "{shard:?}");
    assert_eq!(shard.trimmed.len(), 1, "{shard:?}");
    assert!(
        shard.trimmed[0].contains("trimmed by the stream's retention before they were read"),
        "{shard:?}"
    );
    let text = sluice::cli::status::render(&status);
    assert!(
        text.contains("lost: the records after sequence number"),
        "{text}"
    );

    // A later run starts after a retained record: no new gap.
    let running = Running::start(&config(&lake, &kinesis, stream, "fail"));
    let more = put_events(&client, stream, "later", 5, 1, 6).await;
    expected.extend(more);
    wait_for_rows(
        &url,
        &no_options(),
        expected.len() as u64,
        Duration::from_secs(60),
    )
    .await;
    running.stop().await;
    let status = sluice::status::table_status(&url, &Default::default(), 1)
        .await
        .unwrap();
    assert_eq!(status.partitions[0].trimmed.len(), 1);
    assert_exactly_once(strings(&kernel_read(&table).await, "event_id"), &expected);
}

/// The shard retains nothing at all: the table's record is gone all the
/// same. Sidecars a worker wrote for ordinals it never committed (it died
/// between the two) name other records once `skip` renumbers the shard,
/// and must not stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_retains_nothing_is_a_gap_and_stale_sidecars_do_not_block_skip() {
    let kinesis = Kinesalite::start();
    let client = kinesis.client();
    let stream = "emptied";
    create_stream(&client, stream, 1).await;
    let mut expected = put_events(&client, stream, "read", 5, 2, 0).await;
    let lake = Lake::new();
    let table = lake.table("orders");
    let url = first_run(&lake, &kinesis, stream, expected.len()).await;
    kinesis.age_past_retention().await;

    let error = failed_run(&lake, &kinesis, stream).await;
    assert!(error.contains("the shard retains none now"), "{error}");

    // Sidecars for ordinals past the table's position, as a worker that died
    // between writing them and committing would leave.
    let positions = std::fs::read_dir(table.join("_sluice_positions"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for ordinal in 10..60 {
        std::fs::write(positions.join(format!("{ordinal:020}")), "4968").unwrap();
    }
    let running = Running::start(&config(&lake, &kinesis, stream, "skip"));
    expected.extend(put_events(&client, stream, "new", 5, 4, 2).await);
    wait_for_rows(
        &url,
        &no_options(),
        expected.len() as u64,
        Duration::from_secs(60),
    )
    .await;
    running.stop().await;
    assert_exactly_once(strings(&kernel_read(&table).await, "event_id"), &expected);
    let status = sluice::status::table_status(&url, &Default::default(), 1)
        .await
        .unwrap();
    let shard = &status.partitions[0];
    assert!(!shard.contiguous, "{shard:?}");
    // Whether the new records arrived before the reader looked decides which
    // of the two forms the note takes; both name the table's position.
    assert!(
        shard.trimmed[0].contains("(ordinal 9, the table's position")
            && shard.trimmed[0].contains("trimmed by the stream's retention"),
        "{shard:?}"
    );
}
