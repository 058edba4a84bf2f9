//! Change events written by Kafka Connect's Protobuf converter: Debezium
//! PostgreSQL envelopes as Protobuf messages (compiled by protoc, encoded
//! by Google's runtime and confluent-kafka's ProtobufSerializer against the
//! registry stand-in, `scripts/debezium_protobuf_events.py`), the same
//! random changes as the JSON mirror test. The tables are typed by the
//! envelope's `Value` message; the mirror equals the source's final state,
//! the log holds every change with its `before` image, and a truncate, an
//! update without an `after` image and an envelope without `op` (unset: an
//! empty string in proto3) are dead letters with the reason. Then the
//! envelope's next version adds a field: the mirror's merge grows the
//! column in its commit.

use std::time::Duration;

use crate::avro::{python, read_frames, script, Registry};
use crate::common::*;
use crate::mirror::{assert_same_state, changes, config_with, mirror_rows, TOPIC};

/// `events` (null: a tombstone) encoded by confluent-kafka's serializer;
/// with `add_field`, under the next version of the envelope.
fn encode(
    lake: &Lake,
    registry: &Registry,
    events: &[serde_json::Value],
    add_field: Option<&str>,
) -> Vec<Vec<u8>> {
    let input = lake.dir.path().join("changes.json");
    std::fs::write(&input, serde_json::to_vec(events).unwrap()).unwrap();
    let out = lake.dir.path().join("frames");
    let mut command = std::process::Command::new(python());
    command
        .arg(script("debezium_protobuf_events.py"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_change_events_become_mirror_and_log_rows() {
    let lake = Lake::new();
    let registry = Registry::start(lake.dir.path());
    let kafka = kafka(TOPIC, 2);
    let changes = changes(1_000, 3_000, 11);
    let mut events: Vec<serde_json::Value> = changes
        .events
        .iter()
        .map(|(_, value)| match value.is_empty() {
            true => serde_json::Value::Null,
            false => serde_json::from_slice(value).unwrap(),
        })
        .collect();
    let source = events[0]["source"].clone();
    events.push(serde_json::json!({"before": null, "after": null, "source": source, "op": "t", "ts_ms": 1, "transaction": null}));
    events.push(serde_json::json!({"before": {"id": 7, "name": "x", "balance": 1}, "after": null, "source": source, "op": "u", "ts_ms": 1, "transaction": null}));
    events.push(serde_json::json!({"before": null, "after": {"id": 8, "name": "y", "balance": 2}, "source": source, "ts_ms": 1, "transaction": null}));
    let frames = encode(&lake, &registry, &events, None);
    let producer = kafka.producer().unwrap();
    let keys = changes
        .events
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(["t", "7", "8"]);
    for (key, frame) in keys.zip(&frames) {
        sluice::demo::broker::send(&producer, TOPIC, key, frame).unwrap();
    }
    sluice::demo::broker::flush(&producer).unwrap();

    let mut config = config_with(
        &lake,
        &kafka,
        "[maintenance]\nenabled = false",
        Some(&registry.url),
    );
    // The mirror's source names the envelope message; the log's takes the
    // file's first message, which is the same one.
    for source in &mut config.sources {
        if let sluice::config::SourceConfig::Kafka(k) = source {
            if k.name == "mirror" {
                k.message = Some(format!("{TOPIC}.Envelope"));
            }
        }
    }
    config.validate().unwrap();
    let mutations = changes.mutations().count() as u64;
    let running = Running::start(&config);
    running
        .wait_for(Duration::from_secs(120), "every change", |s| {
            s.dead_lettered >= 6 && s.committed >= 2 * mutations
        })
        .await;
    assert_same_state(&mirror_rows(&lake).await, &changes.state);

    // The envelope's next version adds `email`: the mirror grows the column
    // in the merge that first carries it.
    let (kept, old) = changes
        .state
        .iter()
        .next()
        .map(|(k, v)| (*k, v.clone()))
        .unwrap();
    let mut source = events[0]["source"].clone();
    source["lsn"] = serde_json::json!(900_000_000);
    source["sequence"] = serde_json::json!("[\"899999990\",\"900000000\"]");
    let update = serde_json::json!({
        "before": {"id": kept, "name": old.0, "balance": old.1},
        "after": {"id": kept, "name": old.0, "balance": old.1, "email": "k@example.com"},
        "source": source, "op": "u", "ts_ms": 2, "transaction": null});
    let frames = encode(&lake, &registry, &[update], Some("email"));
    sluice::demo::broker::send(&producer, TOPIC, &kept.to_string(), &frames[0]).unwrap();
    sluice::demo::broker::flush(&producer).unwrap();
    running
        .wait_for(Duration::from_secs(60), "the grown change", |s| {
            s.committed >= 2 * (mutations + 1)
        })
        .await;
    let stats = running.stop().await;
    assert_eq!(stats.dead_lettered, 6, "{stats:?}");
    assert_same_state(&mirror_rows(&lake).await, &changes.state);
    let mirror = kernel_read(&lake.table("customers")).await;
    let emails: Vec<(String, String)> = strings(&mirror, "id")
        .into_iter()
        .zip(strings(&mirror, "email"))
        .filter(|(_, email)| !email.is_empty())
        .collect();
    assert_eq!(emails, [(kept.to_string(), "k@example.com".to_string())]);

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
        "an update keeps its before image"
    );

    let reasons = strings(
        &kernel_read(&lake.table("customers_dead_letters")).await,
        "error",
    );
    for wanted in [
        "`op` = `t`",
        "`op` = `u` without an `after` image",
        "no `op`",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(wanted)),
            "no `{wanted}` in {reasons:?}"
        );
    }

    let url = url::Url::from_directory_path(lake.table("customers")).unwrap();
    let status = sluice::status::table_status(&url, &no_options(), 1 << 20)
        .await
        .unwrap();
    let text = sluice::cli::status::render(&status);
    assert!(text.contains(&format!("{TOPIC}-value v1 (id ")), "{text}");
    let table = load(&lake.table("customers")).await;
    let typed_by = table.snapshot().unwrap().metadata().configuration()["sluice.schema"].clone();
    assert_eq!(
        typed_by,
        format!("debezium protobuf registry subject {TOPIC}-value v1")
    );
    register_for_spark(
        &lake.table("customers"),
        "mirror_protobuf_customers",
        changes.state.len(),
    );
}
