//! Avro topics: messages written by confluent-kafka's `AvroSerializer`
//! against a schema-registry stand-in (the real client must accept it
//! unchanged) and by fastavro, tables typed from the registry's schema,
//! read back with `delta_kernel`; bad messages go to dead letters, and an
//! unavailable registry pauses ingestion instead of dead-lettering.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use sluice::config::Config;
use sluice::demo::broker::{self, EmbeddedKafka};

use crate::common::*;

/// The Python with confluent-kafka and fastavro (installed by scripts/test).
pub fn python() -> String {
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/sluice-venv/bin/python",
            std::env::var("HOME").unwrap()
        )
    });
    assert!(
        Path::new(&python).exists(),
        "no Python at {python}: run scripts/test, which installs confluent-kafka and fastavro (or set SLUICE_PYTHON)"
    );
    python
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// The schema-registry stand-in on 127.0.0.1, stopped when dropped.
pub struct Registry {
    child: Child,
    pub url: String,
}

impl Registry {
    pub fn start(dir: &Path) -> Self {
        let port_file = dir.join("registry.port");
        let child = Command::new(python())
            .arg(script("registry.py"))
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the registry stand-in");
        let started = std::time::Instant::now();
        while !port_file.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = std::fs::read_to_string(&port_file).unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{}", port.trim()),
        }
    }

    /// Freezes (true) or thaws (false) the registry process: it stops answering.
    pub fn pause(&self, paused: bool) {
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.pause(false);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Encodes events `start..start+count` with the Python encoders; the frames.
pub fn encode(args: &[&str], dir: &Path) -> Vec<Vec<u8>> {
    let out = dir.join(format!("frames-{}", rand_suffix()));
    let status = Command::new(python())
        .arg(script("avro_events.py"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run avro_events.py");
    assert!(status.success(), "avro_events.py {args:?} failed");
    read_frames(&out)
}

/// The messages of a frames file: each a 4-byte big-endian length and its bytes.
pub fn read_frames(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        frames.push(bytes[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    frames
}

/// Encodes events `start..start+count` of schema `version` with
/// confluent-kafka's serializer, registering with the registry at `url`.
fn registry_events<'a>(
    url: &'a str,
    topic: &'a str,
    dir: &'a Path,
) -> impl Fn(usize, usize, &str) -> Vec<Vec<u8>> + 'a {
    move |start, count, version| {
        encode(
            &[
                "--registry",
                url,
                "--topic",
                topic,
                "--version",
                version,
                "--start",
                &start.to_string(),
                "--count",
                &count.to_string(),
            ],
            dir,
        )
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn send_all(kafka: &EmbeddedKafka, topic: &str, frames: &[Vec<u8>]) {
    let producer = kafka.producer().expect("producer");
    for (n, frame) in frames.iter().enumerate() {
        broker::send(&producer, topic, &format!("k{}", n % 7), frame).expect("send");
    }
    broker::flush(&producer).expect("flush");
}

fn avro_config(lake: &Lake, brokers: &str, topic: &str, source: &str) -> Config {
    let text = format!(
        r#"
[lake]
root = "{root}"

[batching]
max_latency = "700ms"

[erasure]
enabled = false

[[sources]]
kind = "kafka"
name = "k"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "g-{topic}"
format = "avro"
{source}

[[tables]]
name = "rides"
source = "k"
key = "user_id"
metadata_columns = ["source_position"]
derived = [{{ name = "date", from = "event_time", transform = "date" }}]
partition_by = ["date"]
"#,
        root = lake.root()
    );
    parse_valid(&text)
}

async fn event_ids(table: &Path) -> Vec<String> {
    strings(&kernel_read(table).await, "event_id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_framed_avro_types_the_table_and_bad_messages_are_dead_letters() {
    let lake = Lake::new();
    let registry = Registry::start(lake.dir.path());
    let topic = "rides-avro";
    let kafka = kafka(topic, 2);
    let range = registry_events(&registry.url, topic, lake.dir.path());
    // The table is typed from the subject's latest schema when ingestion starts.
    let v1 = range(0, 400, "v1");
    let source = format!("registry = {{ url = \"{}\" }}", registry.url);
    let config = avro_config(&lake, kafka.bootstrap_servers(), topic, &source);
    let running = Running::start(&config);

    // Bad messages among good ones: truncated, another magic byte, an id
    // the registry does not know, too short for the header.
    let mut frames = v1.clone();
    let mut truncated = v1[3].clone();
    truncated.truncate(truncated.len() - 6);
    let mut magic = v1[4].clone();
    magic[0] = 7;
    let mut unknown = v1[5].clone();
    unknown[1..5].copy_from_slice(&4242u32.to_be_bytes());
    frames.extend([truncated, magic, unknown, vec![0, 0]]);
    send_all(&kafka, topic, &frames);
    running
        .wait_for(Duration::from_secs(60), "v1 rows", |s| {
            s.committed >= 400 && s.dead_lettered >= 4
        })
        .await;

    // The registry goes away while records with a schema id sluice has not
    // seen yet arrive: ingestion waits, nothing is dead-lettered.
    let v2 = range(400, 100, "v2");
    registry.pause(true);
    send_all(&kafka, topic, &v2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let paused = running.stats.snapshot();
    assert_eq!(paused.dead_lettered, 4, "{paused:?}");
    assert!(
        paused.committed < 500,
        "nothing of v2 could be decoded: {paused:?}"
    );
    registry.pause(false);
    running
        .wait_for(Duration::from_secs(60), "v2 rows", |s| s.committed >= 500)
        .await;

    // v3 changes a field's type: refused, the table's schema is unchanged.
    let v3 = range(500, 50, "v3");
    send_all(&kafka, topic, &v3);
    running
        .wait_for(Duration::from_secs(60), "v3 dead letters", |s| {
            s.dead_lettered >= 54
        })
        .await;
    let stats = running.stop().await;
    assert_eq!(
        (stats.committed, stats.dead_lettered),
        (500, 54),
        "{stats:?}"
    );

    let table = lake.table("rides");
    let expected: Vec<String> = (0..500).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(event_ids(&table).await, &expected);

    // Types Spark and BigQuery read, and the values the encoder wrote.
    let batches = kernel_read(&table).await;
    let schema = batches[0].schema();
    let ty = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
    assert!(matches!(
        ty("event_time"),
        DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some(_))
    ));
    assert_eq!(ty("ride_date"), DataType::Date32);
    assert_eq!(ty("fare"), DataType::Decimal128(10, 2));
    assert_eq!(ty("city"), DataType::Utf8);
    assert_eq!(ty("wait"), DataType::Int64);
    assert_eq!(ty("code"), DataType::Binary);
    assert!(matches!(ty("payment"), DataType::Struct(f) if f.len() == 2));
    assert!(matches!(ty("attributes"), DataType::Map(..)));
    assert!(matches!(ty("tags"), DataType::List(..)));
    let by_id: std::collections::HashMap<String, (String, String, String, i64)> = {
        let mut out = std::collections::HashMap::new();
        for batch in &batches {
            let ids = strings(std::slice::from_ref(batch), "event_id");
            let cities = strings(std::slice::from_ref(batch), "city");
            let fares = strings(std::slice::from_ref(batch), "fare");
            let users = strings(std::slice::from_ref(batch), "user_id");
            let times = batch
                .column_by_name("event_time")
                .unwrap()
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            for row in 0..batch.num_rows() {
                out.insert(
                    ids[row].clone(),
                    (
                        cities[row].clone(),
                        fares[row].clone(),
                        users[row].clone(),
                        times.value(row),
                    ),
                );
            }
        }
        out
    };
    let epoch_micros = 1_714_564_800_000_000i64; // 2024-05-01T12:00:00Z
    for n in [0usize, 7, 401] {
        let (city, fare, user, time) = &by_id[&format!("e-{n}")];
        assert_eq!(city, ["LON", "PAR", "NYC"][n % 3]);
        assert_eq!(fare, &format!("{}.25", n % 1000));
        assert_eq!(user, &format!("u-{}", n % 97));
        assert_eq!(*time, epoch_micros + n as i64 * 1_000_000);
    }
    // A non-null union is a struct with the member that was set.
    let payment = batches
        .iter()
        .flat_map(|b| {
            let ids = strings(std::slice::from_ref(b), "event_id");
            let payment = b.column_by_name("payment").unwrap().as_struct().clone();
            (0..b.num_rows()).map(move |r| (ids[r].clone(), payment.slice(r, 1)))
        })
        .find(|(id, _)| id == "e-3")
        .unwrap()
        .1;
    let set: Vec<bool> = payment.columns().iter().map(|c| c.is_valid(0)).collect();
    assert_eq!(set.iter().filter(|v| **v).count(), 1, "{payment:?}");

    // v2 added `tip` and `pickup.zone`: the table took them in the commit
    // that carried the first v2 rows; v1 rows read null there.
    let commits = commits_with_operation(&table, "STREAMING UPDATE");
    let evolving: Vec<&Vec<serde_json::Value>> = commits
        .iter()
        .filter(|c| c.iter().any(|a| a.get("metaData").is_some()))
        .collect();
    assert_eq!(evolving.len(), 1, "one commit grows the schema");
    assert!(
        evolving[0].iter().any(|a| a.get("add").is_some()),
        "with data"
    );
    assert!(
        evolving[0].iter().any(|a| a.get("txn").is_some()),
        "and positions"
    );
    let schema_string = evolving[0]
        .iter()
        .find_map(|a| a["metaData"]["schemaString"].as_str())
        .unwrap();
    assert!(schema_string.contains("\"tip\"") && schema_string.contains("\"zone\""));
    let tips: std::collections::HashMap<String, Option<f64>> = batches
        .iter()
        .flat_map(|b| {
            let ids = strings(std::slice::from_ref(b), "event_id");
            let tip = b
                .column_by_name("tip")
                .expect("tip column")
                .as_primitive::<arrow::datatypes::Float64Type>()
                .clone();
            (0..b.num_rows()).map(move |r| (ids[r].clone(), tip.is_valid(r).then(|| tip.value(r))))
        })
        .collect();
    assert_eq!(tips["e-3"], None, "v1 rows read null");
    assert_eq!(tips["e-405"], Some(40.5));
    assert_eq!(ty("rating"), DataType::Int32, "v3 changed nothing");

    // Field docs are column comments in the Delta schema.
    let log = std::fs::read_to_string(table.join("_delta_log/00000000000000000000.json")).unwrap();
    assert!(log.contains("Unique id of the event"), "{log}");
    assert!(
        log.contains(r#""sluice.schema":"avro registry subject rides-avro-value v1""#),
        "what typed the table is a table property: {log}"
    );

    let dead = strings(
        &kernel_read(&lake.table("rides_dead_letters")).await,
        "error",
    );
    let all = dead.join("\n");
    for reason in [
        "truncated",
        "magic byte 0",
        "unknown schema id 4242",
        "5-byte header",
        "field `rating` changes type",
    ] {
        assert!(all.contains(reason), "{reason} in {all}");
    }
    assert_status_names_schemas(&table, "rides-avro-value").await;
    register_for_spark_with(
        &table,
        "avro_rides",
        500,
        serde_json::json!({"comments": {
            "event_id": "Unique id of the event",
            "pickup.lat": "Latitude of the pickup",
        }}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_evolving_one_table_at_once_converge() {
    let lake = Lake::new();
    let registry = Registry::start(lake.dir.path());
    let topic = "rides-evolving";
    let kafka = kafka(topic, 2);
    let range = registry_events(&registry.url, topic, lake.dir.path());
    send_all(&kafka, topic, &range(0, 300, "v1"));
    let source = format!("registry = {{ url = \"{}\" }}", registry.url);
    let config = avro_config(&lake, kafka.bootstrap_servers(), topic, &source);
    let (a, b) = (Running::start(&config), Running::start(&config));
    let total =
        |a: &Running, b: &Running| a.stats.snapshot().committed + b.stats.snapshot().committed;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while total(&a, &b) < 300 {
        assert!(std::time::Instant::now() < deadline, "v1 rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both partitions, so both workers, see the new schema at once.
    send_all(&kafka, topic, &range(300, 300, "v2"));
    while total(&a, &b) < 600 {
        assert!(std::time::Instant::now() < deadline, "v2 rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(sa.dead_lettered + sb.dead_lettered, 0);
    let table = lake.table("rides");
    let expected: Vec<String> = (0..600).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(event_ids(&table).await, &expected);
    let schema = load(&table)
        .await
        .snapshot()
        .unwrap()
        .snapshot()
        .arrow_schema();
    assert!(schema.field_with_name("tip").is_ok(), "{schema:?}");
    let growing = commits_with_operation(&table, "STREAMING UPDATE")
        .into_iter()
        .filter(|c| c.iter().any(|a| a.get("metaData").is_some()))
        .count();
    assert!(
        (1..=2).contains(&growing),
        "{growing} commits grew the schema"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_avro_bodies_with_a_schema_file() {
    let lake = Lake::new();
    let topic = "rides-plain";
    let kafka = kafka(topic, 1);
    let schema = lake.dir.path().join("ride.avsc");
    let text = Command::new(python())
        .arg(script("avro_events.py"))
        .args(["--schema", "v1"])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(&schema, text).unwrap();
    let frames = encode(&["--wire", "plain", "--count", "300"], lake.dir.path());
    send_all(&kafka, topic, &frames);
    let source = format!("schema_file = \"{}\"", schema.display());
    let config = avro_config(&lake, kafka.bootstrap_servers(), topic, &source);
    let running = Running::start(&config);
    running
        .wait_for(Duration::from_secs(60), "rows", |s| s.committed >= 300)
        .await;
    running.stop().await;
    let expected: Vec<String> = (0..300).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(event_ids(&lake.table("rides")).await, &expected);
}

#[test]
fn a_bad_avro_source_config_is_refused_naming_the_key() {
    let lake = Lake::new();
    let problems = |source: &str| {
        let text = format!(
            "[lake]\nroot = \"{}\"\n[[sources]]\nkind = \"kafka\"\nname = \"k\"\nbrokers = \"b:9092\"\ntopics = [\"t\"]\ngroup_id = \"g\"\n{source}\n[[tables]]\nname = \"t\"\nsource = \"k\"\nkey = \"id\"\n",
            lake.root()
        );
        Config::parse(&text, "t")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    };
    let none = problems("format = \"avro\"");
    assert!(
        none.contains("sources[0].registry") && none.contains("schema_file"),
        "{none}"
    );
    let missing = problems("format = \"avro\"\nschema_file = \"/nope.avsc\"");
    assert!(
        missing.contains("sources[0].schema_file") && missing.contains("/nope.avsc"),
        "{missing}"
    );
    let url = problems("format = \"avro\"\nregistry = { url = \"registry:8081\" }");
    assert!(url.contains("sources[0].registry.url"), "{url}");
    let json_columns = problems("");
    assert!(json_columns.contains("tables[0].columns"), "{json_columns}");
    // Avro and Protobuf change events: through the registry only, typed by
    // the envelope.
    let file = problems("format = \"debezium\"\nschema_file = \"/x.avsc\"");
    assert!(
        file.contains("sources[0].format") && file.contains("Avro and Protobuf converters'"),
        "{file}"
    );
    let both = problems(
        "format = \"debezium\"\nregistry = { url = \"http://registry:8081\" }\nmessage = \"a.Envelope\"\ntopic_convention = '^(?P<message>.+)$'",
    );
    assert!(
        both.contains("sources[0].message") && both.contains("not both"),
        "{both}"
    );
    let url = problems("format = \"debezium\"\nregistry = { url = \"registry:8081\" }");
    assert!(
        url.contains("sources[0].registry.url") && !url.contains("tables[0].columns"),
        "{url}"
    );
}

/// The templates tests' pattern source (`^prod\..+`, one convention
/// template naming tables `<service>__<message>`) reading registry-framed
/// Avro; `template_extra` adds keys to the template.
fn pattern_config(lake: &Lake, brokers: &str, registry: &str, template_extra: &str) -> Config {
    crate::templates::config_with(
        lake,
        brokers,
        &format!("format = \"avro\"\nregistry = {{ url = \"{registry}\" }}"),
        &format!("key = \"user_id\"\n{template_extra}"),
    )
}

/// Whether sluice has found the registry at `url` unavailable.
fn registry_waited(running: &Running, url: &str) -> bool {
    let metrics = sluice::telemetry::metrics::render(
        &running.stats,
        &sluice::telemetry::metrics::Gauges {
            buffered_bytes: 0,
            budget_bytes: 1,
            ready: true,
            now_ms: 0,
        },
    );
    metrics
        .lines()
        .any(|l| l.starts_with("sluice_registry_unavailable_total") && l.contains(url))
}

/// A new topic whose table cannot be typed yet (the registry stopped
/// answering when its first records came) holds up only itself: the
/// source's other topic keeps committing meanwhile, and the new table
/// catches up once the registry answers again, every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_waiting_for_its_schema_does_not_hold_up_the_other_topics() {
    let lake = Lake::new();
    let registry = Registry::start(lake.dir.path());
    let (rides, trips) = (
        "prod.rides-service.events.ride.Ride",
        "prod.trips-service.events.trip.Trip",
    );
    let kafka = kafka(rides, 1);
    // Encoded now: the serializer registers each schema while the
    // registry answers.
    let rides_events = registry_events(&registry.url, rides, lake.dir.path());
    let (first, second) = (rides_events(0, 100, "v1"), rides_events(100, 100, "v1"));
    let new_topic = registry_events(&registry.url, trips, lake.dir.path())(1000, 50, "v1");
    let config = pattern_config(&lake, kafka.bootstrap_servers(), &registry.url, "");
    let running = Running::start(&config);
    send_all(&kafka, rides, &first);
    running
        .wait_for(Duration::from_secs(60), "the first topic's rows", |s| {
            s.committed >= 100
        })
        .await;

    // The new topic's table starts while the registry does not answer.
    registry.pause(true);
    send_all(&kafka, trips, &new_topic);
    let waiting_since = std::time::Instant::now();
    while !registry_waited(&running, &registry.url) {
        assert!(
            waiting_since.elapsed() < Duration::from_secs(60),
            "the new topic's table never asked the registry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send_all(&kafka, rides, &second);
    running
        .wait_for(
            Duration::from_secs(30),
            "the first topic's later rows while the new table waits",
            |s| s.committed >= 200,
        )
        .await;
    assert_eq!(
        running.stats.snapshot().committed,
        200,
        "nothing of the new topic can be committed yet"
    );

    registry.pause(false);
    running
        .wait_for(Duration::from_secs(60), "the new topic's rows", |s| {
            s.committed >= 250
        })
        .await;
    let stats = running.stop().await;
    assert_eq!(
        (stats.committed, stats.dead_lettered),
        (250, 0),
        "{stats:?}"
    );
    let expected: Vec<String> = (0..200).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(
        event_ids(&lake.table("rides_service__Ride")).await,
        &expected,
    );
    let expected: Vec<String> = (1000..1050).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(
        event_ids(&lake.table("trips_service__Trip")).await,
        &expected,
    );
}

/// Topics merged into one table: the first topic's start is refused (its
/// registry subject does not exist) after the second topic's records
/// queued behind it, while the registry did not answer. Those records are
/// routed again, start the table under their own topic, and land once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_queued_behind_a_refused_start_start_the_table_anew() {
    let lake = Lake::new();
    let registry = Registry::start(lake.dir.path());
    let (unknown, known) = (
        "prod.rides-service.events.v1.Ride",
        "prod.rides-service.events.v2.Ride",
    );
    let kafka = kafka(unknown, 1);
    // Frames of another subject: the first topic's subject never exists.
    let strays = registry_events(&registry.url, "elsewhere", lake.dir.path())(0, 20, "v1");
    let rides = registry_events(&registry.url, known, lake.dir.path())(0, 80, "v1");
    let config = pattern_config(
        &lake,
        kafka.bootstrap_servers(),
        &registry.url,
        "merge = true",
    );
    let running = Running::start(&config);

    registry.pause(true);
    send_all(&kafka, unknown, &strays);
    let waiting_since = std::time::Instant::now();
    while !registry_waited(&running, &registry.url) {
        assert!(
            waiting_since.elapsed() < Duration::from_secs(60),
            "the first topic's table never asked the registry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The second topic's records reach the router and queue for the table.
    let held = running.budget.used();
    send_all(&kafka, known, &rides);
    while running.budget.used() <= held {
        assert!(
            waiting_since.elapsed() < Duration::from_secs(60),
            "the second topic's records never came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    registry.pause(false);
    running
        .wait_for(Duration::from_secs(60), "the second topic's rows", |s| {
            s.committed >= 80
        })
        .await;
    let stats = running.stop().await;
    assert_eq!((stats.committed, stats.dead_lettered), (80, 0), "{stats:?}");
    let expected: Vec<String> = (0..80).map(|n| format!("e-{n}")).collect();
    assert_exactly_once(
        event_ids(&lake.table("rides_service__Ride")).await,
        &expected,
    );
    let note = std::fs::read_to_string(
        lake.dir
            .path()
            .join(format!("_sluice_topics/prod/{unknown}.json")),
    )
    .expect("the first topic is noted as refused");
    assert!(note.contains(unknown), "{note}");
}
