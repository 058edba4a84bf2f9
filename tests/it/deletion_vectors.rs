//! Mirror merges with deletion vectors: a batch of updates spread over a
//! table marks the rows it replaces instead of rewriting the files that
//! hold them. The same change events feed three mirror tables: two with
//! deletion vectors (the default) and one copy-on-write
//! (`deletion_vectors = false`). `delta_kernel` applies the vectors and
//! must read the exact source state; Spark reads one of the tables with
//! its vectors still in place (see `scripts/spark_check.py`). An erasure
//! must remove a key's bytes even from rows a vector hides, and a
//! compaction must drop the hidden rows for good, never bring them back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arrow::array::AsArray;
use sluice::demo::broker;
use sluice::erase::{self, TableChoice};

use crate::common::*;
use crate::mirror::{envelope, now_ms, Row};

const TOPIC: &str = "inventory.public.items";
const TABLES: [&str; 3] = ["items_marked", "items_spark", "items_rewritten"];

fn config(lake: &Lake, kafka: &broker::EmbeddedKafka) -> sluice::config::Config {
    let mut text = format!(
        "[lake]\nroot = \"{}\"\n[batching]\nmax_latency = \"300ms\"\n[erasure]\nenabled = false\n",
        lake.root()
    );
    for (i, name) in TABLES.iter().enumerate() {
        text.push_str(&format!(
            "[[sources]]\nkind = \"kafka\"\nname = \"s{i}\"\nbrokers = \"{}\"\ntopics = [\"{TOPIC}\"]\ngroup_id = \"g-{name}\"\nformat = \"debezium\"\n",
            kafka.bootstrap_servers()
        ));
    }
    for (i, name) in TABLES.iter().enumerate() {
        let vectors = if *name == "items_rewritten" {
            "deletion_vectors = false\n"
        } else {
            ""
        };
        text.push_str(&format!(
            r#"[[tables]]
name = "{name}"
source = "s{i}"
key = "id"
mode = "mirror"
primary_key = ["id"]
{vectors}columns = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "name", type = "string", nullable = false }},
  {{ name = "balance", type = "long" }},
]
"#
        ));
    }
    parse_valid(&text)
}

/// Sends one batch of changes and waits until every table committed them.
async fn apply(
    kafka: &broker::EmbeddedKafka,
    running: &Running,
    state: &mut BTreeMap<i64, Row>,
    lsn: &mut u64,
    sent: &mut u64,
    changes: &[(i64, Option<Row>)],
) {
    let producer = kafka.producer().unwrap();
    for (id, after) in changes {
        *lsn += 10;
        let before = state.get(id).cloned();
        let op = match (&before, after) {
            (None, _) => "c",
            (Some(_), Some(_)) => "u",
            (Some(_), None) => "d",
        };
        let value = envelope(
            op,
            *id,
            before.as_ref(),
            after.as_ref(),
            *lsn,
            Some(*lsn - 5),
        );
        broker::send(&producer, TOPIC, &id.to_string(), &value).unwrap();
        match after {
            Some(row) => state.insert(*id, row.clone()),
            None => state.remove(id),
        };
    }
    broker::flush(&producer).unwrap();
    *sent += changes.len() as u64;
    let wanted = *sent * TABLES.len() as u64;
    running
        .wait_for(Duration::from_secs(120), "the batch", |s| {
            s.committed >= wanted
        })
        .await;
}

async fn rows(lake: &Lake, table: &str) -> BTreeMap<i64, Row> {
    let mut out = BTreeMap::new();
    for batch in kernel_read(&lake.table(table)).await {
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        let names = arrow::compute::cast(
            batch.column_by_name("name").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let balances = batch
            .column_by_name("balance")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        for row in 0..batch.num_rows() {
            let image = (
                names.as_string::<i32>().value(row).to_string(),
                balances.value(row),
            );
            assert!(
                out.insert(ids.value(row), image).is_none(),
                "{table}: id {} twice",
                ids.value(row)
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_mark_replaced_rows_and_readers_erasure_and_compaction_honour_them() {
    test_log();
    let lake = Lake::new();
    let kafka = kafka(TOPIC, 1);
    let config = config(&lake, &kafka);
    let running = Running::start(&config);
    let (mut state, mut lsn, mut sent) = (BTreeMap::new(), 1_000u64, 0u64);
    let row = |id: i64, round: i64| Some((format!("item-{id}-{round}"), id * 100 + round));

    // 1. Inserts: every table's first files.
    let inserts: Vec<_> = (0..3_000).map(|id| (id, row(id, 0))).collect();
    apply(&kafka, &running, &mut state, &mut lsn, &mut sent, &inserts).await;
    let first_files: BTreeSet<String> =
        live_adds(&lake.table("items_marked")).into_keys().collect();

    // 2. Updates spread over the key space, and deletes.
    let mut second: Vec<_> = (0..3_000).step_by(7).map(|id| (id, row(id, 1))).collect();
    second.extend((1_000..1_100).map(|id| (id, None)));
    apply(&kafka, &running, &mut state, &mut lsn, &mut sent, &second).await;

    // 3. Some of the same keys again (their vectors grow), and a
    //    re-insert of a deleted key.
    let third: Vec<_> = (0..3_000)
        .step_by(21)
        .map(|id| (id, row(id, 2)))
        .chain([(1_050, row(1_050, 3))])
        .collect();
    apply(&kafka, &running, &mut state, &mut lsn, &mut sent, &third).await;

    for table in TABLES {
        assert_eq!(
            rows(&lake, table).await,
            state,
            "{table} differs from the source"
        );
    }
    // A property change (another topic feeding the table) keeps the
    // protocol as it is: later merges still commit (step 6).
    let url = url::Url::from_directory_path(lake.table("items_marked")).unwrap();
    sluice::table::about::add_source(&url, &no_options(), "kafka:inventory.more")
        .await
        .unwrap();
    // `sluice status` counts the rows readers see and the marked files.
    let status = sluice::status::table_status(&url, &no_options(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(status.rows, state.len() as u64);
    let raw = raw_ids(&lake.table("items_marked")).await.len() as u64;
    assert_eq!(status.hidden_rows, raw - status.rows);
    let rendered = sluice::cli::status::render(&status);
    assert!(
        rendered.contains(&format!(
            "rows         {}, {} more rows hidden",
            status.rows, status.hidden_rows
        )),
        "{rendered}"
    );
    // So does the catalog, for the people who read the lake.
    let catalog = sluice::catalog::gather::read(&config, 1 << 20, now_ms())
        .await
        .unwrap();
    let text = sluice::catalog::text::render(&catalog);
    assert!(
        text.contains(&format!(
            "{} more rows hidden by deletion vectors until compaction",
            status.hidden_rows
        )),
        "{text}"
    );
    assert!(
        rendered.contains("files given deletion vectors"),
        "{rendered}"
    );
    // The marking tables kept their first files, now with deletion vectors,
    // and rewrote none; the copy-on-write table rewrote and marked none.
    let adds = live_adds(&lake.table("items_marked"));
    for path in &first_files {
        let add = adds
            .get(path)
            .unwrap_or_else(|| panic!("{path} was rewritten"));
        let dv = &add["deletionVector"];
        assert_eq!(dv["storageType"], "u", "{add}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(add["stats"].as_str().unwrap()).unwrap()
                ["tightBounds"],
            false
        );
    }
    assert!(merge_sums(&lake.table("items_marked"), "files_marked") >= 2);
    assert_eq!(
        merge_sums(&lake.table("items_marked"), "files_rewritten"),
        0
    );
    assert!(merge_sums(&lake.table("items_rewritten"), "files_rewritten") >= 2);
    assert_eq!(
        merge_sums(&lake.table("items_rewritten"), "files_marked"),
        0
    );
    assert!(live_adds(&lake.table("items_rewritten"))
        .values()
        .all(|a| a["deletionVector"].is_null()));
    let protocol = |table: &str| {
        let table = lake.table(table).join("_delta_log");
        let first = std::fs::read_to_string(table.join(format!("{:020}.json", 1))).unwrap();
        first.lines().find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("protocol")
                .cloned()
        })
    };
    assert_eq!(
        protocol("items_marked").expect("deletion vectors switched on in version 1"),
        serde_json::json!({"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]})
    );
    assert_eq!(protocol("items_rewritten"), None);
    // Hidden rows are still in the bytes until something rewrites them.
    let hidden = raw_ids(&lake.table("items_marked")).await.len() - state.len();
    assert!(hidden > 400, "{hidden} hidden rows");

    // Spark and BigQuery read such tables.
    let url = sluice::table::resolve_existing(lake.table("items_spark").to_str().unwrap()).unwrap();
    let opened = sluice::table::open(&url, &no_options()).await.unwrap();
    let report = sluice::check::check(
        &opened,
        &[
            sluice::check::Target::Bigquery,
            sluice::check::Target::Spark,
        ],
        100,
    )
    .await
    .unwrap();
    assert!(!report.fails(), "{}", report.render());

    // 4. Erasure of a key updated twice: two of its old images are hidden
    //    by vectors. None of its bytes may survive.
    let erased: i64 = 21;
    let key = sluice::erase::keys::SubjectKey::parse(&format!("id={erased}")).unwrap();
    erase::file_requests(&config, &[key], &TableChoice::All, "ticket-dv", now_ms())
        .await
        .unwrap();
    erase::apply_all(&config, now_ms(), None).await.unwrap();
    state.remove(&erased);
    for table in TABLES {
        assert!(
            !raw_ids(&lake.table(table)).await.contains(&erased),
            "{table} still holds {erased}'s bytes"
        );
        assert_eq!(rows(&lake, table).await, state, "{table} after the erasure");
    }

    // 5. Compaction drops hidden rows physically and resurrects none.
    let mut table = load(&lake.table("items_marked")).await;
    let metrics = sluice::maintain::compact::compact(&mut table, &Default::default(), &|_| {})
        .await
        .unwrap();
    assert!(metrics.files_in >= 2, "{metrics:?}");
    assert_eq!(rows(&lake, "items_marked").await, state);
    assert!(live_adds(&lake.table("items_marked"))
        .values()
        .all(|a| a["deletionVector"].is_null()));
    let mut ids = raw_ids(&lake.table("items_marked")).await;
    ids.sort_unstable();
    assert_eq!(ids, state.keys().copied().collect::<Vec<_>>());

    // 6. Merges after the compaction mark the new files.
    let fourth: Vec<_> = (0..3_000)
        .step_by(11)
        .map(|id| (id, row(id, 4)))
        .filter(|(id, _)| *id != erased)
        .collect();
    apply(&kafka, &running, &mut state, &mut lsn, &mut sent, &fourth).await;
    running.stop().await;
    for table in TABLES {
        assert_eq!(rows(&lake, table).await, state, "{table} at the end");
    }
    assert!(live_adds(&lake.table("items_marked"))
        .values()
        .any(|a| !a["deletionVector"].is_null()));

    // 7. Vacuum deletes the vectors no live file uses any more (the
    //    compaction dropped them) and keeps the ones live files use.
    let options = sluice::maintain::vacuum::VacuumOptions {
        retention: Duration::ZERO,
        force_short_retention: true,
        ..Default::default()
    };
    let table = load(&lake.table("items_marked")).await;
    let (_, report) = sluice::maintain::vacuum::vacuum(table, &options)
        .await
        .unwrap();
    assert!(
        report.files.iter().any(|f| f.contains("deletion_vector_")),
        "{:?}",
        report.files
    );
    assert_eq!(rows(&lake, "items_marked").await, state, "after vacuum");
    register_for_spark(
        &lake.table("items_spark"),
        "mirror_deletion_vectors",
        state.len(),
    );
}
