//! A registry subject of a schema type the source cannot read is refused
//! at start, naming the subject and its type, before anything is written:
//! a Debezium source on a JSON-schema subject, an Avro source on a
//! Protobuf subject, and a MongoDB envelope (its image is JSON text) for a
//! table that declares no columns. The subjects are registered by confluent-kafka's own
//! `SchemaRegistryClient` against the registry stand-in.

use std::process::Command;

use sluice::config::Config;

use crate::avro::{python, Registry};
use crate::common::*;

/// Registers `schema` of `kind` under `subject` with confluent-kafka's client.
fn register(registry: &Registry, subject: &str, kind: &str, schema: &str) {
    let program =
        "import sys\nfrom confluent_kafka.schema_registry import SchemaRegistryClient, Schema\n\
client = SchemaRegistryClient({'url': sys.argv[1]})\n\
print(client.register_schema(sys.argv[2], Schema(sys.argv[4], sys.argv[3])))\n";
    let status = Command::new(python())
        .args(["-c", program, &registry.url, subject, kind, schema])
        .status()
        .unwrap();
    assert!(status.success(), "registering {subject}");
}

fn config(lake: &Lake, brokers: &str, registry: &str, format: &str, topic: &str) -> Config {
    let mode = if format == "debezium" {
        "mode = \"mirror\"\nprimary_key = [\"id\"]"
    } else {
        ""
    };
    parse_valid(&format!(
        r#"
[lake]
root = "{root}"
[erasure]
enabled = false
[[sources]]
kind = "kafka"
name = "k"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "g-types"
format = "{format}"
registry = {{ url = "{registry}" }}
[[tables]]
name = "t"
source = "k"
key = "id"
{mode}
"#,
        root = lake.root(),
    ))
}

async fn refusal(config: &Config) -> String {
    sluice::ingest::run(
        config,
        tokio_util::sync::CancellationToken::new(),
        std::sync::Arc::new(sluice::telemetry::stats::IngestStats::new()),
    )
    .await
    .expect_err("the source cannot read the subject's schema type")
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_of_another_schema_type_is_refused_before_anything_is_written() {
    let lake = Lake::new();
    let registry = Registry::start(lake.dir.path());
    let kafka = kafka("changes", 1);
    let json_schema = r#"{"type": "object", "properties": {"id": {"type": "integer"}}}"#;
    register(&registry, "changes-value", "JSON", json_schema);
    let proto = "syntax = \"proto3\";\npackage shop;\nmessage Ride { int64 id = 1; }\n";
    register(&registry, "rides-value", "PROTOBUF", proto);
    let brokers = kafka.bootstrap_servers();

    let debezium = refusal(&config(
        &lake,
        brokers,
        &registry.url,
        "debezium",
        "changes",
    ))
    .await;
    assert!(
        debezium.contains("changes-value")
            && debezium.contains("a JSON schema; Debezium envelopes are read as Avro or Protobuf"),
        "{debezium}"
    );
    let avro = refusal(&config(&lake, brokers, &registry.url, "avro", "rides")).await;
    assert!(
        avro.contains("subject `rides-value` holds a PROTOBUF schema, not AVRO"),
        "{avro}"
    );
    // A MongoDB envelope keeps its image as extended-JSON text: the table
    // needs declared columns.
    let mongo_envelope = r#"{"type": "record", "name": "Envelope", "namespace": "shop.people", "fields": [
        {"name": "after", "type": ["null", "string"], "default": null},
        {"name": "source", "type": {"type": "record", "name": "Source", "fields": [{"name": "connector", "type": "string"}]}},
        {"name": "op", "type": ["null", "string"], "default": null}]}"#;
    register(&registry, "people-value", "AVRO", mongo_envelope);
    let mongo = refusal(&config(&lake, brokers, &registry.url, "debezium", "people")).await;
    assert!(
        mongo.contains("people-value")
            && mongo.contains(
                "a MongoDB envelope (`after` is extended-JSON text): declare the table's `columns`"
            ),
        "{mongo}"
    );
    assert!(
        files_under(lake.dir.path())
            .iter()
            .all(|f| !f.to_string_lossy().contains("_delta_log")),
        "nothing was written"
    );
}
