//! Stale writers are fenced: a commit whose partitions moved on is refused,
//! also when two writers race for the same partition.

use arrow::datatypes::{DataType, Field, Schema};
use sluice::table::commit::{commit_with_positions, CommitError, PositionUpdate};
use sluice::table::lineage::{CommitKind, CommitLineage};
use sluice::table::{open_or_create, recorded_positions, resolve_location};
use std::time::Duration;

use crate::common::*;

fn lineage() -> CommitLineage {
    CommitLineage {
        kind: CommitKind::Data,
        worker: "test".into(),
        partitions: vec![],
        unknown_fields: Default::default(),
        schemas: Default::default(),
        merge: None,
    }
}

fn update(prev: Option<i64>, last: i64) -> PositionUpdate {
    PositionUpdate {
        app_id: "sluice/k/t/0".into(),
        prev,
        last,
    }
}

async fn table(lake: &Lake) -> deltalake::DeltaTable {
    let url = resolve_location(&lake.table("fenced").display().to_string()).unwrap();
    open_at(&url, &no_options()).await
}

async fn open_at(
    url: &url::Url,
    options: &std::collections::BTreeMap<String, String>,
) -> deltalake::DeltaTable {
    let schema = Schema::new(vec![Field::new("id", DataType::Utf8, true)]);
    open_or_create(url, options, "fenced", &schema, &[], &[], None)
        .await
        .unwrap()
}

/// `rounds` rounds of four writers committing the same next range of one
/// partition to the table at `url`: exactly one lands in each.
pub async fn race_rounds(
    url: &url::Url,
    options: &std::collections::BTreeMap<String, String>,
    rounds: i64,
) {
    open_at(url, options).await;
    for round in 0..rounds {
        let prev = if round == 0 { None } else { Some(round * 100) };
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let mut t = open_at(url, options).await;
            tasks.push(tokio::spawn(async move {
                commit_with_positions(
                    &mut t,
                    vec![],
                    &[update(prev, (round + 1) * 100)],
                    &lineage(),
                    &format!("w{worker}"),
                    1,
                )
                .await
            }));
        }
        let mut landed = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => landed += 1,
                Err(CommitError::Stale { .. }) => {}
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        assert_eq!(
            landed, 1,
            "round {round}: exactly one racing writer may land"
        );
    }
}

#[tokio::test]
async fn a_commit_from_a_stale_position_is_refused() {
    let lake = Lake::new();
    let mut writer = table(&lake).await;
    let version = commit_with_positions(
        &mut writer,
        vec![],
        &[update(None, 10)],
        &lineage(),
        "w1",
        1,
    )
    .await
    .expect("first commit");
    assert_eq!(version, 1);

    // A second worker still believes nothing was committed.
    let mut stale = table(&lake).await;
    let refused =
        commit_with_positions(&mut stale, vec![], &[update(None, 7)], &lineage(), "w2", 1).await;
    match refused {
        Err(CommitError::Stale {
            table_position,
            ours,
            ..
        }) => {
            assert_eq!((table_position, ours), (Some(10), None));
        }
        other => panic!("expected a stale refusal, got {other:?}"),
    }
    let recorded = recorded_positions(&stale, &["sluice/k/t/0".to_string()])
        .await
        .unwrap();
    assert_eq!(recorded.get("sluice/k/t/0"), Some(&10));

    // Continuing from the recorded position is accepted.
    commit_with_positions(
        &mut stale,
        vec![],
        &[update(Some(10), 20)],
        &lineage(),
        "w2",
        2,
    )
    .await
    .expect("commit continuing from the table's position");
}

/// A commit remembers the positions it read and wrote for the version it
/// made; a position another writer recorded in a later version, outside
/// sluice's commit path, must still fence the next commit.
#[tokio::test]
async fn a_position_recorded_by_another_writer_after_our_commit_fences_the_next() {
    use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
    use deltalake::kernel::Transaction;
    use deltalake::protocol::{DeltaOperation, OutputMode};

    let lake = Lake::new();
    let mut ours = table(&lake).await;
    for (epoch, (prev, last)) in [(None, 5), (Some(5), 8)].into_iter().enumerate() {
        commit_with_positions(
            &mut ours,
            vec![],
            &[update(prev, last)],
            &lineage(),
            "w1",
            epoch as i64,
        )
        .await
        .expect("our commits");
    }

    // Another writer (delta-rs alone) moves the partition to 9.
    let other = table(&lake).await;
    let properties = CommitProperties::default().with_application_transactions(vec![
        Transaction::new_with_last_update("sluice/k/t/0", 9, None),
    ]);
    let operation = DeltaOperation::StreamingUpdate {
        output_mode: OutputMode::Append,
        query_id: "other".into(),
        epoch_id: 1,
    };
    let landed = CommitBuilder::from(properties)
        .build(
            Some(other.snapshot().unwrap()),
            other.log_store(),
            operation,
        )
        .await
        .expect("the other writer's commit");
    assert_eq!(landed.version(), 3);

    let refused = commit_with_positions(
        &mut ours,
        vec![],
        &[update(Some(8), 12)],
        &lineage(),
        "w1",
        3,
    )
    .await;
    match refused {
        Err(CommitError::Stale {
            table_position,
            ours,
            ..
        }) => assert_eq!((table_position, ours), (Some(9), Some(8))),
        other => panic!("expected a stale refusal, got {other:?}"),
    }
    let version = commit_with_positions(
        &mut ours,
        vec![],
        &[update(Some(9), 12)],
        &lineage(),
        "w1",
        4,
    )
    .await
    .expect("a commit from the recorded position");
    assert_eq!(version, 4);
    ours.update_state().await.unwrap();
    let recorded = recorded_positions(&ours, &["sluice/k/t/0".to_string()])
        .await
        .unwrap();
    assert_eq!(recorded.get("sluice/k/t/0"), Some(&12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_of_one_partition_land_exactly_one_commit() {
    let lake = Lake::new();
    let url = resolve_location(&lake.table("fenced").display().to_string()).unwrap();
    race_rounds(&url, &no_options(), 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_seek_after_a_fenced_batch_is_retried_not_skipped() {
    use sluice::table::lineage::PartitionRange;
    let lake = Lake::new();
    let topic = "seek-fails";
    let kafka = kafka(topic, 1);
    let mut config = kafka_config(
        &lake,
        kafka.bootstrap_servers(),
        topic,
        "g-seek",
        "max_latency = \"3s\"",
        "",
    );
    config.erasure.enabled = false;
    config.maintenance.enabled = false;
    let running = Running::start(&config);
    let first = produce(&kafka, topic, "a", 100, 0);
    running
        .wait_for(Duration::from_secs(60), "records buffered", |s| {
            s.received >= 100
        })
        .await;
    // Another worker commits offsets 0..=49 first: this worker's batch is
    // stale, and the seek back to offset 50 fails a few times.
    sluice::source::kafka::fail_next_seeks(topic, 3);
    let app_id = format!("sluice/k/{topic}/0");
    let mut other = load(&lake.table("events")).await;
    let lineage = CommitLineage {
        kind: CommitKind::Data,
        worker: "other".into(),
        partitions: vec![PartitionRange {
            app_id: app_id.clone(),
            prev: None,
            first: 0,
            last: 49,
            received: 50,
            committed: 50,
            dead_lettered: 0,
            suppressed: 0,
            skipped: 0,
            schema_ids: Vec::new(),
            refused_schema_ids: Vec::new(),
            trimmed: Vec::new(),
        }],
        unknown_fields: Default::default(),
        schemas: Default::default(),
        merge: None,
    };
    commit_with_positions(
        &mut other,
        vec![],
        &[PositionUpdate {
            app_id,
            prev: None,
            last: 49,
        }],
        &lineage,
        "other",
        1,
    )
    .await
    .unwrap();
    running
        .wait_for(Duration::from_secs(30), "the stale batch fenced", |s| {
            s.fenced >= 1
        })
        .await;
    let second = produce(&kafka, topic, "b", 100, 0);
    let mut expected: Vec<String> = first[50..].to_vec();
    expected.extend(second);
    let url = url::Url::from_directory_path(lake.table("events")).unwrap();
    wait_for_rows(&url, &no_options(), 150, Duration::from_secs(60)).await;
    running.stop().await;
    let ids = strings(&kernel_read(&lake.table("events")).await, "event_id");
    assert_exactly_once(ids, &expected);
}
