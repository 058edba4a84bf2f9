//! Change events: Debezium envelopes of PostgreSQL (bare), MySQL (inside
//! the JSON converter's `schema`/`payload` wrapper) and MongoDB (extended
//! JSON text), as the Debezium documentation shows them
//! (`fixtures/debezium/`), each topic into its mutation-log table: one row
//! per insert, update, delete and snapshot read with its source position
//! and transaction; tombstones skipped and counted; a truncate and a
//! record that is not an envelope dead-lettered with the reason.

use std::path::Path;
use std::time::Duration;

use sluice::demo::broker::{self, EmbeddedKafka};

use crate::common::*;

/// The fixture's events, `TOMBSTONE` lines as empty values.
fn events(name: &str) -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/debezium")
        .join(name);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| match line {
            "TOMBSTONE" => Vec::new(),
            event => event.as_bytes().to_vec(),
        })
        .collect()
}

const CUSTOMER: &str = r#"[
  { name = "id", type = "long" },
  { name = "first_name", type = "string" },
  { name = "last_name", type = "string" },
  { name = "email", type = "string" },
]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_become_mutation_log_rows() {
    let lake = Lake::new();
    let topics = [
        ("dbserver1.inventory.customers", "postgres.ndjson"),
        ("mysql-server-1.inventory.customers", "mysql.ndjson"),
        ("fulfillment.inventory.customers", "mongodb.ndjson"),
    ];
    let kafka = EmbeddedKafka::start_with(
        &topics
            .iter()
            .map(|(t, _)| (t.to_string(), 1))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let producer = kafka.producer().unwrap();
    // Keyed as Debezium keys them: MongoDB's delete carries its document
    // key only there.
    let mongo_key = r#"{"id":"{\"$oid\": \"5d28e5f3ed2c9b00015f1a2b\"}"}"#;
    for (topic, fixture) in topics {
        let key = if fixture == "mongodb.ndjson" {
            mongo_key
        } else {
            ""
        };
        for event in events(fixture) {
            broker::send(&producer, topic, key, &event).unwrap();
        }
    }
    broker::flush(&producer).unwrap();
    let source = |name: &str, topic: &str| {
        format!(
            "[[sources]]\nkind = \"kafka\"\nname = \"{name}\"\nbrokers = \"{}\"\ntopics = [\"{topic}\"]\ngroup_id = \"cdc-{name}\"\nformat = \"debezium\"\n",
            kafka.bootstrap_servers()
        )
    };
    let text = format!(
        r#"
[lake]
root = "{root}"
[batching]
max_latency = "300ms"
[erasure]
enabled = false
{pg}{my}{mongo}
[[tables]]
name = "pg_customers"
source = "pg"
key = "id"
before_image = true
columns = {CUSTOMER}
[[tables]]
name = "mysql_customers"
source = "my"
key = "id"
columns = {CUSTOMER}
[[tables]]
name = "mongo_customers"
source = "mongo"
key = "id"
columns = [
  {{ name = "id", field = "_id", type = "string" }},
  {{ name = "first_name", type = "string" }},
  {{ name = "visits", type = "long" }},
  {{ name = "since", type = "timestamp", epoch_unit = "millis" }},
]
[[tables]]
name = "mongo_mirror"
source = "mongo_mirror"
key = "id"
mode = "mirror"
primary_key = ["id"]
columns = [
  {{ name = "id", field = "_id", type = "string" }},
  {{ name = "first_name", type = "string" }},
]
"#,
        root = lake.root(),
        pg = source("pg", topics[0].0),
        my = source("my", topics[1].0),
        mongo = source("mongo", topics[2].0) + &source("mongo_mirror", topics[2].0),
    );
    let config = parse_valid(&text);
    let running = Running::start(&config);
    running
        .wait_for(Duration::from_secs(60), "changes", |s| {
            s.committed >= 13 && s.dead_lettered >= 2
        })
        .await;
    let stats = running.stop().await;
    // The mirror's delete took its key from the record key: no dead letter.
    assert_eq!((stats.committed, stats.dead_lettered), (13, 2), "{stats:?}");
    let mirror = kernel_read(&lake.table("mongo_mirror")).await;
    assert_eq!(
        mirror.iter().map(|b| b.num_rows()).sum::<usize>(),
        0,
        "the document was inserted, updated, then deleted"
    );

    let rows = |batches: &[arrow::array::RecordBatch], column: &str| strings(batches, column);
    let pg = kernel_read(&lake.table("pg_customers")).await;
    assert_eq!(rows(&pg, "cdc_op"), ["r", "c", "u", "d"]);
    assert_eq!(
        rows(&pg, "cdc_position"),
        [
            "lsn=24023100",
            "lsn=24023128",
            "lsn=24023200",
            "lsn=24023300"
        ]
    );
    assert_eq!(
        rows(&pg, "first_name"),
        ["Sally", "Anne", "Anne Marie", "Anne Marie"],
        "a delete keeps its before image"
    );
    let tx = rows(&pg, "cdc_tx");
    assert_eq!(tx[1], "555:24023128");
    let before = sluice::table::schema::column_at(&pg[0], "cdc_before.first_name").unwrap();
    use arrow::array::{Array, AsArray};
    let before = before.as_string::<i32>();
    assert!(
        before.is_null(0) && before.is_null(1),
        "no before image for r and c"
    );
    assert_eq!(before.value(2), "Anne");

    let mysql = kernel_read(&lake.table("mysql_customers")).await;
    assert_eq!(rows(&mysql, "cdc_op"), ["c", "u", "d"]);
    assert_eq!(
        rows(&mysql, "cdc_position")[1],
        "file=mysql-bin.000003,pos=484,row=0"
    );
    assert_eq!(
        rows(&mysql, "cdc_table"),
        ["customers", "customers", "customers"]
    );

    let mongo = kernel_read(&lake.table("mongo_customers")).await;
    assert_eq!(rows(&mongo, "cdc_op"), ["c", "u", "d"]);
    assert_eq!(rows(&mongo, "id")[0], "5d28e5f3ed2c9b00015f1a2b", "$oid");
    assert_eq!(
        rows(&mongo, "id")[2],
        "5d28e5f3ed2c9b00015f1a2b",
        "the delete's document key, from the record key"
    );
    assert_eq!(
        rows(&mongo, "cdc_position")[0],
        "ord=31,ts_ms=1558965508000"
    );
    let visits = mongo[0].column_by_name("visits").unwrap();
    assert_eq!(
        visits
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(1),
        13,
        "$numberLong"
    );

    // Tombstones are skipped and counted: every partition's counts add up.
    for table in ["pg_customers", "mysql_customers", "mongo_customers"] {
        let url = url::Url::from_directory_path(lake.table(table)).unwrap();
        let status = sluice::status::table_status(&url, &no_options(), 1 << 20)
            .await
            .unwrap();
        let partition = &status.partitions[0];
        assert!(
            partition.counts_add_up && partition.contiguous,
            "{table}: {partition:?}"
        );
        assert_eq!(partition.skipped, 1, "{table}: one tombstone");
        let text = sluice::cli::status::render(&status);
        assert!(
            text.contains("0 suppressed (erasure), 1 skipped (tombstones)"),
            "{text}"
        );
    }
    let reasons = strings(
        &kernel_read(&lake.table("pg_customers_dead_letters")).await,
        "error",
    );
    assert!(reasons[0].contains("`op` = `t`"), "{reasons:?}");
    let reasons = strings(
        &kernel_read(&lake.table("mysql_customers_dead_letters")).await,
        "error",
    );
    assert!(reasons[0].contains("not an object"), "{reasons:?}");
    register_for_spark_with(
        &lake.table("pg_customers"),
        "debezium_pg",
        4,
        serde_json::json!({"types": {
            "cdc_ts": "timestamp",
            "id": "bigint",
            "cdc_before": "struct<id:bigint,first_name:string,last_name:string,email:string>",
        }}),
    );
}
