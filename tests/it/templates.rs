//! Topics by pattern, tables by template, against tansu (an independent
//! broker): two workers subscribed by `topic_pattern` make one table per
//! convention-named topic on its first record (racing to create them), pick
//! up a topic created while they run, and refuse a topic no template takes
//! (noted for `sluice catalog`); every table holds its topic's records
//! exactly once and says where they came from.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::tansu::Tansu;

const CONVENTION: &str =
    r"^(?P<env>[^.]+)\.(?P<service>[^.]+)\.(?P<kind>[^.]+)\.(?P<file>[^.]+)\.(?P<message>[^.]+)$";

/// A pattern source over `^prod\..+` and one convention template;
/// `source_extra` and `template_extra` add keys to each.
pub(crate) fn config_with(
    lake: &Lake,
    brokers: &str,
    source_extra: &str,
    template_extra: &str,
) -> sluice::config::Config {
    let text = format!(
        r#"
[lake]
root = "{root}"
[batching]
max_latency = "300ms"
[erasure]
enabled = false
[maintenance]
enabled = false
[[sources]]
kind = "kafka"
name = "prod"
brokers = "{brokers}"
topic_pattern = '^prod\..+'
group_id = "templates"
metadata_refresh = "1s"
properties = {{ "group.instance.id" = "" }}
{source_extra}
[[table_templates]]
source = "prod"
topic = '{CONVENTION}'
name = "{{service}}__{{message}}"
{template_extra}
"#,
        root = lake.root()
    );
    parse_valid(&text)
}

/// JSON events with an id and a user, described and owned by service.
fn config(lake: &Lake, brokers: &str) -> sluice::config::Config {
    config_with(
        lake,
        brokers,
        "",
        r#"key = "user_id"
description = "{message} events of the {service} service"
owner = "{service}-team"
columns = [
  { name = "event_id", type = "string", nullable = false },
  { name = "user_id", type = "string", nullable = false },
]"#,
    )
}

fn send(tansu: &Tansu, topic: &str, count: usize) -> Vec<String> {
    let producer = tansu.producer();
    let ids: Vec<String> = (0..count).map(|n| format!("{topic}/{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let payload = format!(r#"{{"event_id":"{id}","user_id":"u-{}"}}"#, n % 7);
        sluice::demo::broker::send(&producer, topic, &format!("u-{n}"), payload.as_bytes())
            .unwrap();
    }
    sluice::demo::broker::flush(&producer).unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convention_topics_become_tables_by_template() {
    let lake = Lake::new();
    let tansu = Tansu::start();
    let rides = "prod.rides-service.events.ride.RideEvent";
    let invoices = "prod.billing-service.events.invoice.Invoice";
    let stray = "prod.stray";
    tansu.create_topic(rides, 2).await;
    tansu.create_topic(invoices, 1).await;
    tansu.create_topic(stray, 1).await;
    let config = config(&lake, &tansu.bootstrap);
    let (a, b) = (Running::start(&config), Running::start(&config));
    let ride_ids = send(&tansu, rides, 300);
    let invoice_ids = send(&tansu, invoices, 100);
    send(&tansu, stray, 10);
    let committed =
        |a: &Running, b: &Running| a.stats.snapshot().committed + b.stats.snapshot().committed;
    let deadline = Instant::now() + Duration::from_secs(90);
    while committed(&a, &b) < 400 {
        assert!(
            Instant::now() < deadline,
            "first topics: {}",
            committed(&a, &b)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A topic created while the workers run gets its table too.
    let payments = "prod.payments-service.events.pay.Payment";
    let created = Instant::now();
    tansu.create_topic(payments, 1).await;
    let payment_ids = send(&tansu, payments, 50);
    while committed(&a, &b) < 450 {
        assert!(
            Instant::now() < deadline,
            "new topic: {}",
            committed(&a, &b)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "a new topic's first rows were committed {:?} after it was created (metadata refresh 1s, max_latency 300ms)",
        created.elapsed()
    );
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(sa.committed + sb.committed, 450, "{sa:?} {sb:?}");

    for (table, ids, service, message) in [
        (
            "rides_service__RideEvent",
            &ride_ids,
            "rides-service",
            "RideEvent",
        ),
        (
            "billing_service__Invoice",
            &invoice_ids,
            "billing-service",
            "Invoice",
        ),
        (
            "payments_service__Payment",
            &payment_ids,
            "payments-service",
            "Payment",
        ),
    ] {
        let path = lake.table(table);
        assert_exactly_once(strings(&kernel_read(&path).await, "event_id"), ids);
        let log = std::fs::read_to_string(path.join("_delta_log/00000000000000000000.json"))
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        assert!(
            log.contains(&format!("{message} events of the {service} service")),
            "{table}: {log}"
        );
        assert!(
            log.contains(&format!(r#""sluice.owner":"{service}-team""#)),
            "{log}"
        );
    }
    let workers: std::collections::BTreeSet<String> =
        commits_with_operation(&lake.table("rides_service__RideEvent"), "STREAMING UPDATE")
            .iter()
            .flatten()
            .filter_map(|a| {
                a["commitInfo"]["sluice"]["worker"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
    println!("workers that committed to the rides table: {workers:?}");
    let note = lake.dir.path().join("_sluice_topics/prod/prod.stray.json");
    let note: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&note).unwrap_or_else(|e| panic!("{}: {e}", note.display())),
    )
    .unwrap();
    assert!(
        note["reason"]
            .as_str()
            .unwrap()
            .contains("no `[[table_templates]]` entry"),
        "{note}"
    );
    assert!(
        !lake.table("prod_stray").exists(),
        "a refused topic makes no table"
    );

    // The catalog lists the tables the templates made, and the refusal.
    let catalog =
        sluice::catalog::gather::read(&config, 1 << 20, chrono::Utc::now().timestamp_millis())
            .await
            .unwrap();
    let names: Vec<&str> = catalog.tables.iter().map(|t| t.name.as_str()).collect();
    for table in [
        "rides_service__RideEvent",
        "billing_service__Invoice",
        "payments_service__Payment",
    ] {
        assert!(names.contains(&table), "{table} in {names:?}");
    }
    let rides_entry = catalog
        .tables
        .iter()
        .find(|t| t.name == "rides_service__RideEvent")
        .unwrap();
    assert_eq!(rides_entry.structural.sources, [format!("kafka:{rides}")]);
    assert_eq!(
        rides_entry.structural.template.as_deref(),
        Some("{service}__{message}")
    );
    assert!(
        rides_entry
            .structural
            .convention
            .contains(&("service".to_string(), "rides-service".to_string())),
        "{:?}",
        rides_entry.structural.convention
    );
    assert_eq!(rides_entry.administrative.rows, 300);
    assert!(rides_entry.administrative.complete);
    assert_eq!(
        catalog.refused_topics.len(),
        1,
        "{:?}",
        catalog.refused_topics
    );
    assert_eq!(catalog.refused_topics[0].topic, stray);
}

/// An erasure request filed for every table covers the tables templates
/// made before it (found under the lake root) and the ones they make after
/// it: a topic created later joins the request before its first record, so
/// the key's records never land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_every_table_cover_tables_made_later() {
    use sluice::erase::{self, keys::SubjectKey, TableChoice};
    let lake = Lake::new();
    let tansu = Tansu::start();
    let rides = "prod.rides-service.events.ride.RideEvent";
    tansu.create_topic(rides, 1).await;
    let config = config(&lake, &tansu.bootstrap);
    let running = Running::start(&config);
    let ride_ids = send(&tansu, rides, 70);
    running
        .wait_for(Duration::from_secs(60), "rides", |s| s.committed >= 70)
        .await;

    // u-3 is erased from every table: the rides table, found under the root.
    let now = chrono::Utc::now().timestamp_millis();
    let filed = erase::file_requests(
        &config,
        &[SubjectKey::parse("user_id=u-3").unwrap()],
        &TableChoice::All,
        "ticket-7",
        now,
    )
    .await
    .unwrap();
    assert!(
        filed[0]
            .tables
            .contains(&"rides_service__RideEvent".to_string()),
        "{filed:?}"
    );
    erase::apply_all(&config, now, None).await.unwrap();

    // A topic created afterwards: its table joins the request first.
    let payments = "prod.payments-service.events.pay.Payment";
    tansu.create_topic(payments, 1).await;
    let payment_ids = send(&tansu, payments, 70);
    running
        .wait_for(Duration::from_secs(60), "payments", |s| s.committed >= 130)
        .await;
    let stats = running.stop().await;
    // Every seventh record is u-3's.
    assert_eq!((stats.committed, stats.suppressed), (130, 10), "{stats:?}");

    let users = |batches: &[arrow::array::RecordBatch]| strings(batches, "user_id");
    let remaining_rides = users(&kernel_read(&lake.table("rides_service__RideEvent")).await);
    assert_eq!(remaining_rides.len(), 60, "u-3's rides were deleted");
    assert!(!remaining_rides.contains(&"u-3".to_string()));
    let payment_rows = kernel_read(&lake.table("payments_service__Payment")).await;
    assert_eq!(users(&payment_rows).len(), 60);
    assert!(
        !users(&payment_rows).contains(&"u-3".to_string()),
        "held back at ingest"
    );
    let kept: Vec<String> = payment_ids
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 7 != 3)
        .map(|(_, id)| id.clone())
        .collect();
    assert_exactly_once(strings(&payment_rows, "event_id"), &kept);
    assert_eq!(ride_ids.len(), 70);

    let requests = erase::open_ledger(&config)
        .await
        .unwrap()
        .requests()
        .await
        .unwrap();
    let tables: Vec<&String> = requests[0].tables.keys().collect();
    assert!(
        tables.contains(&&"payments_service__Payment".to_string())
            && tables.contains(&&"payments_service__Payment.dead_letters".to_string()),
        "the ledger learned the new table: {tables:?}"
    );
}

/// Protobuf by convention: the topic names its message in the descriptor
/// set, which types the template's table; a topic naming a message the set
/// does not hold is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topic_names_the_message_of_its_template_table() {
    let lake = Lake::new();
    let tansu = Tansu::start();
    let rides = "prod.rides-service.events.ride.RideEvent";
    let unknown = "prod.rides-service.events.ride.RideRated";
    tansu.create_topic(rides, 1).await;
    tansu.create_topic(unknown, 1).await;
    let (descriptors, frames) = crate::protobuf::encode(lake.dir.path(), 0, 120);
    let source = format!(
        "format = \"protobuf\"\ndescriptor_set = \"{}\"\ntopic_convention = '{CONVENTION}'",
        descriptors.display()
    );
    let config = config_with(&lake, &tansu.bootstrap, &source, "key = \"user_id\"");
    let producer = tansu.producer();
    for topic in [rides, unknown] {
        for frame in &frames {
            sluice::demo::broker::send(&producer, topic, "", frame).unwrap();
        }
    }
    sluice::demo::broker::flush(&producer).unwrap();
    let running = Running::start(&config);
    running
        .wait_for(Duration::from_secs(60), "rows", |s| s.committed >= 120)
        .await;
    let stats = running.stop().await;
    assert_eq!(
        (stats.committed, stats.dead_lettered),
        (120, 0),
        "{stats:?}"
    );
    let table = lake.table("rides_service__RideEvent");
    let batches = kernel_read(&table).await;
    assert_eq!(strings(&batches, "event_id").len(), 120);
    let schema = batches[0].schema();
    assert!(
        matches!(
            schema.field_with_name("event_time").unwrap().data_type(),
            arrow::datatypes::DataType::Timestamp(..)
        ),
        "typed by the descriptor's message: {schema:?}"
    );
    let log = std::fs::read_to_string(table.join("_delta_log/00000000000000000000.json")).unwrap();
    assert!(log.contains("message rides.v1.RideEvent"), "{log}");
    let note: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            lake.dir
                .path()
                .join(format!("_sluice_topics/prod/{unknown}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        note["reason"].as_str().unwrap().contains("RideRated"),
        "{note}"
    );
}

/// Topics whose names render to one table name: with `merge = true` they
/// feed one table (positions are per topic-partition); without it the
/// second topic is refused and the first keeps its table to itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_lets_several_topics_feed_one_table() {
    for merge in [true, false] {
        let lake = Lake::new();
        let tansu = Tansu::start();
        let prod = "prod.clicks-service.events.click.Click";
        let staging = "staging.clicks-service.events.click.Click";
        tansu.create_topic(prod, 1).await;
        tansu.create_topic(staging, 1).await;
        let text = config(&lake, &tansu.bootstrap);
        let mut config = text.clone();
        if let sluice::config::SourceConfig::Kafka(k) = &mut config.sources[0] {
            k.topic_pattern = Some(r"^(prod|staging)\..+".into());
        }
        config.table_templates[0].merge = merge;
        let prod_ids = send(&tansu, prod, 40);
        let staging_ids = send(&tansu, staging, 30);
        let running = Running::start(&config);
        let wanted = if merge { 70 } else { 1 };
        running
            .wait_for(Duration::from_secs(60), "clicks", |s| s.committed >= wanted)
            .await;
        // Without merge, give the other topic time to be refused.
        tokio::time::sleep(Duration::from_secs(if merge { 0 } else { 2 })).await;
        let stats = running.stop().await;
        let rows = strings(
            &kernel_read(&lake.table("clicks_service__Click")).await,
            "event_id",
        );
        if merge {
            let all: Vec<String> = prod_ids.iter().chain(&staging_ids).cloned().collect();
            assert_exactly_once(rows, &all);
            // Both topics are the table's sources (each added itself).
            let expected = format!("kafka:{prod},kafka:{staging}");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let url =
                    url::Url::from_directory_path(lake.table("clicks_service__Click")).unwrap();
                let table = sluice::table::open(&url, &no_options()).await.unwrap();
                let sources = table
                    .snapshot()
                    .unwrap()
                    .metadata()
                    .configuration()
                    .get("sluice.sources")
                    .cloned();
                if sources.as_deref() == Some(expected.as_str()) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "sluice.sources is {sources:?}, expected {expected}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } else {
            let notes: Vec<_> = std::fs::read_dir(lake.dir.path().join("_sluice_topics/prod"))
                .unwrap()
                .collect();
            assert_eq!(notes.len(), 1, "one of the two topics is refused");
            assert!(
                rows == prod_ids || rows == staging_ids || {
                    let mut sorted = rows.clone();
                    sorted.sort();
                    let (mut p, mut s) = (prod_ids.clone(), staging_ids.clone());
                    p.sort();
                    s.sort();
                    sorted == p || sorted == s
                },
                "the table holds one topic's records: {stats:?}"
            );
        }
    }
}

/// A template table gets the maintenance loop of a configured one: its
/// small files are compacted and Z-ordered by the template's columns once
/// it goes idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_tables_are_maintained() {
    use sluice::config::{ByteSize, Span};
    let lake = Lake::new();
    let tansu = Tansu::start();
    let rides = "prod.rides-service.events.ride.RideEvent";
    tansu.create_topic(rides, 1).await;
    let mut config = config_with(
        &lake,
        &tansu.bootstrap,
        "",
        r#"key = "user_id"
zorder_by = ["user_id"]
columns = [
  { name = "event_id", type = "string", nullable = false },
  { name = "user_id", type = "string", nullable = false },
]"#,
    );
    let m = &mut config.maintenance;
    m.enabled = true;
    m.interval = Span(Duration::from_secs(1));
    m.compact_min_small_files = 4;
    m.small_file_size = ByteSize(1 << 20);
    m.compact_target_size = ByteSize(8 << 20);
    m.zorder_idle = Span(Duration::from_secs(3));
    let running = Running::start(&config);
    // Five waves of 40: five small files at least.
    for _ in 0..5 {
        send(&tansu, rides, 40);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    running
        .wait_for(Duration::from_secs(60), "rows", |s| s.committed >= 200)
        .await;
    let table = lake.table("rides_service__RideEvent");
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let now = chrono::Utc::now().timestamp_millis();
            let catalog = sluice::catalog::gather::read(&config, 1 << 20, now)
                .await
                .unwrap();
            let entry = catalog
                .tables
                .iter()
                .find(|t| t.name == "rides_service__RideEvent");
            if entry.is_some_and(|t| t.structural.zordered_share == Some(1.0)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("the maintenance loop Z-orders the template table");
    let stats = running.stop().await;
    assert_eq!((stats.committed, stats.fenced), (200, 0), "{stats:?}");
    assert_eq!(strings(&kernel_read(&table).await, "event_id").len(), 200);
}

/// A template's key may be a nested field (`customer.id`): an erasure
/// request for every table deletes its rows by the nested value, and a
/// table made later holds them back at ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_key_column_is_erased_by_its_value() {
    use sluice::erase::{self, keys::SubjectKey, TableChoice};
    let lake = Lake::new();
    let tansu = Tansu::start();
    let orders = "prod.shop-service.events.order.Order";
    tansu.create_topic(orders, 1).await;
    let config = config_with(
        &lake,
        &tansu.bootstrap,
        "",
        r#"key = "customer.id"
columns = [
  { name = "event_id", type = "string", nullable = false },
  { name = "customer", type = "struct<id:string,tier:string>" },
]"#,
    );
    let send_orders = |topic: &str| {
        let producer = tansu.producer();
        for n in 0..70 {
            let payload = format!(
                r#"{{"event_id":"{topic}/{n}","customer":{{"id":"c-{}","tier":"gold"}}}}"#,
                n % 7
            );
            sluice::demo::broker::send(&producer, topic, "", payload.as_bytes()).unwrap();
        }
        sluice::demo::broker::flush(&producer).unwrap();
    };
    let running = Running::start(&config);
    send_orders(orders);
    running
        .wait_for(Duration::from_secs(60), "orders", |s| s.committed >= 70)
        .await;
    let now = chrono::Utc::now().timestamp_millis();
    erase::file_requests(
        &config,
        &[SubjectKey::parse("customer.id=c-3").unwrap()],
        &TableChoice::All,
        "ticket-9",
        now,
    )
    .await
    .unwrap();
    let run = erase::apply_all(&config, now, None).await.unwrap();
    assert!(!run.applied.is_empty(), "{run:?}");

    let refunds = "prod.shop-service.events.refund.Refund";
    tansu.create_topic(refunds, 1).await;
    send_orders(refunds);
    running
        .wait_for(Duration::from_secs(60), "refunds", |s| s.committed >= 130)
        .await;
    let stats = running.stop().await;
    assert_eq!((stats.committed, stats.suppressed), (130, 10), "{stats:?}");
    for table in ["shop_service__Order", "shop_service__Refund"] {
        let batches = kernel_read(&lake.table(table)).await;
        let ids: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let customer = sluice::table::schema::column_at(b, "customer.id").unwrap();
                use arrow::array::AsArray;
                let customer = customer.as_string::<i32>().clone();
                customer
                    .iter()
                    .map(|v| v.unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(ids.len(), 60, "{table}");
        assert!(!ids.contains(&"c-3".to_string()), "{table}: {ids:?}");
    }
}

/// Workers creating one template table at the same moment: one creation
/// wins, the others open it; nobody fails and nothing is committed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_creating_one_table_at_once_converge_on_it() {
    use sluice::table::about::About;
    let lake = Lake::new();
    let config = config(&lake, "127.0.0.1:9");
    let table = config.table_templates[0]
        .table_for("prod.rides-service.events.ride.RideEvent")
        .unwrap();
    let schema = sluice::decode::JsonDecoder::new(&table)
        .unwrap()
        .table_schema();
    let about = About::of(&config, &table, "columns declared in the config");
    let url =
        sluice::table::resolve_location(&lake.table(&table.name).display().to_string()).unwrap();
    let properties = [
        sluice::table::table_properties(Some(&table.key), &table.properties),
        about.pairs(),
    ]
    .concat();
    let creations = (0..4).map(|_| {
        let (url, schema, properties, about, name) = (
            url.clone(),
            schema.clone(),
            properties.clone(),
            about.clone(),
            table.name.clone(),
        );
        tokio::spawn(async move {
            let opened = sluice::table::open_or_create(
                &url,
                &no_options(),
                &name,
                &schema,
                &[],
                &properties,
                about.description.as_deref(),
            )
            .await?;
            Ok::<_, sluice::table::TableError>(about.refresh(opened, &name).await)
        })
    });
    for created in futures::future::join_all(creations).await {
        let opened = created.unwrap().expect("every worker opens the table");
        if opened.version() != Some(0) {
            let commit = std::fs::read_to_string(
                lake.table(&table.name)
                    .join("_delta_log/00000000000000000001.json"),
            )
            .unwrap_or_default();
            panic!("a worker committed again: {commit}");
        }
    }
    let log: Vec<_> = std::fs::read_dir(lake.table(&table.name).join("_delta_log"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .collect();
    assert_eq!(log.len(), 1, "one creation");
}
