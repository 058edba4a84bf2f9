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

use crate::avro::Registry;
use crate::common::*;
use crate::debezium_avro::{ingest_and_check, send_changes};
use crate::mirror::{changes, config_with, TOPIC};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_change_events_become_mirror_and_log_rows() {
    let script_name = "debezium_protobuf_events.py";
    let lake = Lake::new();
    let registry = Registry::start(lake.dir.path());
    let kafka = kafka(TOPIC, 2);
    let changes = changes(1_000, 3_000, 11);
    let events = send_changes(&lake, &registry, &kafka, script_name, &changes, |source| {
        vec![
            serde_json::json!({"before": null, "after": null, "source": source, "op": "t", "ts_ms": 1, "transaction": null}),
            serde_json::json!({"before": {"id": 7, "name": "x", "balance": 1}, "after": null, "source": source, "op": "u", "ts_ms": 1, "transaction": null}),
            serde_json::json!({"before": null, "after": {"id": 8, "name": "y", "balance": 2}, "source": source, "ts_ms": 1, "transaction": null}),
        ]
    });

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
    ingest_and_check(
        &lake,
        &registry,
        &kafka,
        script_name,
        &changes,
        &events[0],
        &config,
        &[
            "`op` = `t`",
            "`op` = `u` without an `after` image",
            "no `op`",
        ],
    )
    .await;

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
