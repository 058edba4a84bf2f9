//! Change events written by Kafka Connect's Avro converter: Debezium
//! PostgreSQL envelopes encoded by confluent-kafka's AvroSerializer against
//! the registry stand-in (`scripts/debezium_avro_events.py`), the same
//! random changes as the JSON mirror test. The tables are typed by the
//! envelope's `Value` record (its doc a column comment); the mirror equals
//! the source's final state, the log holds every change with its `before`
//! image, and a truncate and an update without an `after` image are dead
//! letters with the reason. Then the envelope's next version adds a field:
//! the mirror's merge grows the column in its commit.

use std::time::Duration;

use arrow::array::Array;

use crate::avro::{python, read_frames, script, Registry};
use crate::common::*;
use crate::mirror::{assert_same_state, changes, config_with, mirror_rows, TOPIC};

/// `events` (null: a tombstone) encoded by `script` (a Python encoder
/// using confluent-kafka's serializer); with `add_field`, under the next
/// version of the envelope schema.
pub(crate) fn encode(
    lake: &Lake,
    registry: &Registry,
    script_name: &str,
    events: &[serde_json::Value],
    add_field: Option<&str>,
) -> Vec<Vec<u8>> {
    let input = lake.dir.path().join("changes.json");
    std::fs::write(&input, serde_json::to_vec(events).unwrap()).unwrap();
    let out = lake.dir.path().join("frames");
    let mut command = std::process::Command::new(python());
    command
        .arg(script(script_name))
        .args(["--registry", &registry.url, "--topic", TOPIC, "--changes"])
        .arg(&input)
        .arg("--out")
        .arg(&out);
    if let Some(field) = add_field {
        command.args(["--add-field", field]);
    }
    assert!(command.status().unwrap().success());
    let frames = read_frames(&out);
    assert_eq!(frames.len(), events.len());
    frames
}

/// The mirror test's random changes as JSON envelopes (null: a tombstone),
/// followed by `extra` events (keys `x0`, `x1`, ...), encoded by
/// `script_name` and sent to the topic.
pub(crate) fn send_changes(
    lake: &Lake,
    registry: &Registry,
    kafka: &sluice::demo::broker::EmbeddedKafka,
    script_name: &str,
    changes: &crate::mirror::Changes,
    extra: impl Fn(&serde_json::Value) -> Vec<serde_json::Value>,
) -> Vec<serde_json::Value> {
    let mut events: Vec<serde_json::Value> = changes
        .events
        .iter()
        .map(|(_, value)| match value.is_empty() {
            true => serde_json::Value::Null,
            false => serde_json::from_slice(value).unwrap(),
        })
        .collect();
    let added = extra(&events[0]["source"]);
    let extra_keys: Vec<String> = (0..added.len()).map(|n| format!("x{n}")).collect();
    events.extend(added);
    let frames = encode(lake, registry, script_name, &events, None);
    let producer = kafka.producer().unwrap();
    let keys = changes
        .events
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(extra_keys.iter().map(String::as_str));
    for (key, frame) in keys.zip(&frames) {
        sluice::demo::broker::send(&producer, TOPIC, key, frame).unwrap();
    }
    sluice::demo::broker::flush(&producer).unwrap();
    events
}

/// Sends an update of the first key of the final state under the
/// envelope's next version, which adds `email`; returns the key.
pub(crate) fn send_grown_update(
    lake: &Lake,
    registry: &Registry,
    kafka: &sluice::demo::broker::EmbeddedKafka,
    script_name: &str,
    changes: &crate::mirror::Changes,
    first: &serde_json::Value,
) -> i64 {
    let (kept, old) = changes
        .state
        .iter()
        .next()
        .map(|(k, v)| (*k, v.clone()))
        .unwrap();
    let mut source = first["source"].clone();
    source["lsn"] = serde_json::json!(900_000_000);
    source["sequence"] = serde_json::json!("[\"899999990\",\"900000000\"]");
    let update = serde_json::json!({
        "before": {"id": kept, "name": old.0, "balance": old.1},
        "after": {"id": kept, "name": old.0, "balance": old.1, "email": "k@example.com"},
        "source": source, "op": "u", "ts_ms": 2, "transaction": null});
    let frames = encode(lake, registry, script_name, &[update], Some("email"));
    let producer = kafka.producer().unwrap();
    sluice::demo::broker::send(&producer, TOPIC, &kept.to_string(), &frames[0]).unwrap();
    sluice::demo::broker::flush(&producer).unwrap();
    kept
}

/// The mirror holds `email` for `kept` alone; the log holds every change
/// (positions by LSN, `before` images of updates); the dead letters carry
/// each of `reasons`.
pub(crate) async fn assert_envelope_tables(
    lake: &Lake,
    changes: &crate::mirror::Changes,
    kept: i64,
    reasons: &[&str],
) {
    assert_same_state(&mirror_rows(lake).await, &changes.state);
    let mirror = kernel_read(&lake.table("customers")).await;
    let emails: Vec<(String, String)> = strings(&mirror, "id")
        .into_iter()
        .zip(strings(&mirror, "email"))
        .filter(|(_, email)| !email.is_empty())
        .collect();
    assert_eq!(emails, [(kept.to_string(), "k@example.com".to_string())]);

    let mutations = changes.mutations().count() as u64;
    let log = kernel_read(&lake.table("customers_log")).await;
    assert_eq!(
        log.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
        mutations + 1
    );
    let positions = strings(&log, "cdc_position");
    assert!(
        positions.iter().all(|p| p.starts_with("lsn=")),
        "{:?}",
        &positions[..3]
    );
    let ops = strings(&log, "cdc_op");
    let first_update = ops.iter().position(|o| o == "u").unwrap();
    let before = sluice::table::schema::column_at(&log[0], "cdc_before.name").unwrap();
    assert!(
        first_update < log[0].num_rows() && before.is_valid(first_update),
        "an update in the first batch keeps its before image"
    );

    let found = strings(
        &kernel_read(&lake.table("customers_dead_letters")).await,
        "error",
    );
    for wanted in reasons {
        assert!(
            found.iter().any(|r| r.contains(wanted)),
            "no `{wanted}` in {found:?}"
        );
    }
}

/// Runs ingestion over the changes `send_changes` sent (one dead letter
/// per table for each of `reasons`), sends the grown update, stops, and
/// checks the tables ([`assert_envelope_tables`]) and that `sluice status`
/// names the subject's first version.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn ingest_and_check(
    lake: &Lake,
    registry: &Registry,
    kafka: &sluice::demo::broker::EmbeddedKafka,
    script_name: &str,
    changes: &crate::mirror::Changes,
    first: &serde_json::Value,
    config: &sluice::config::Config,
    reasons: &[&str],
) {
    // The mirror and the log each dead-letter every bad event.
    let dead = 2 * reasons.len() as u64;
    let mutations = changes.mutations().count() as u64;
    let running = Running::start(config);
    running
        .wait_for(Duration::from_secs(120), "every change", |s| {
            s.dead_lettered >= dead && s.committed >= 2 * mutations
        })
        .await;
    assert_same_state(&mirror_rows(lake).await, &changes.state);

    // The envelope's next version adds `email`: the mirror grows the column
    // in the merge that first carries it.
    let kept = send_grown_update(lake, registry, kafka, script_name, changes, first);
    running
        .wait_for(Duration::from_secs(60), "the grown change", |s| {
            s.committed >= 2 * (mutations + 1)
        })
        .await;
    let stats = running.stop().await;
    assert_eq!(stats.dead_lettered, dead, "{stats:?}");
    assert_envelope_tables(lake, changes, kept, reasons).await;

    let url = url::Url::from_directory_path(lake.table("customers")).unwrap();
    let status = sluice::status::table_status(&url, &no_options(), 1 << 20)
        .await
        .unwrap();
    let text = sluice::cli::status::render(&status);
    assert!(text.contains(&format!("{TOPIC}-value v1 (id ")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_change_events_become_mirror_and_log_rows() {
    let script_name = "debezium_avro_events.py";
    let lake = Lake::new();
    let registry = Registry::start(lake.dir.path());
    let kafka = kafka(TOPIC, 2);
    let changes = changes(1_000, 3_000, 5);
    let events = send_changes(&lake, &registry, &kafka, script_name, &changes, |source| {
        vec![
            serde_json::json!({"before": null, "after": null, "source": source, "op": "t", "ts_ms": 1, "transaction": null}),
            serde_json::json!({"before": {"id": 7, "name": "x", "balance": 1}, "after": null, "source": source, "op": "u", "ts_ms": 1, "transaction": null}),
        ]
    });

    let config = config_with(
        &lake,
        &kafka,
        "[maintenance]\nenabled = false",
        Some(&registry.url),
    );
    ingest_and_check(
        &lake,
        &registry,
        &kafka,
        script_name,
        &changes,
        &events[0],
        &config,
        &["`op` = `t`", "`op` = `u` without an `after` image"],
    )
    .await;

    // Typed by the envelope: the Value record's doc is the column's comment.
    let table = load(&lake.table("customers")).await;
    let schema = table.snapshot().unwrap().snapshot().arrow_schema();
    let name = schema.field_with_name("name").unwrap();
    assert_eq!(
        name.metadata().get("comment").map(String::as_str),
        Some("The customer's name")
    );
    register_for_spark_with(
        &lake.table("customers"),
        "mirror_avro_customers",
        changes.state.len(),
        serde_json::json!({"comments": {"name": "The customer's name"}}),
    );
}
