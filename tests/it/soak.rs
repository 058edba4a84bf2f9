//! The fleet against an independent broker (tansu): three `sluice serve`
//! workers, a producer at a steady rate, one worker killed with SIGKILL
//! every few seconds and restarted under its id, maintenance (compaction,
//! Z-order) running every two seconds and an erasure request filed from the
//! CLI mid-run. Every event lands exactly once except the erased user's,
//! whose rows are gone; the lineage of every partition is contiguous; Spark
//! reads the table (`scripts/test`).
//!
//! `SLUICE_SOAK_SECONDS` (default 45), `SLUICE_SOAK_KILL_EVERY` (seconds,
//! default 12) and `SLUICE_SOAK_RATE` (events/s, default 300) make it a
//! long soak: `scripts/soak` runs it for ten minutes with 100+ kills.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::demo::broker;
use sluice::erase::ledger::State;

use crate::common::*;
use crate::serve::{value, ServeProcess};
use crate::tansu::Tansu;

const TOPIC: &str = "soak";
const PARTITIONS: i32 = 6;
const USERS: usize = 50;
const ERASED: &str = "u-7";

fn setting(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_config(lake: &Lake, tansu: &Tansu) -> std::path::PathBuf {
    let path = lake.dir.path().join("soak.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[lake]
root = "{root}"
[batching]
max_latency = "1s"
shutdown_grace = "10s"
[service]
drain_delay = "0s"
[maintenance]
interval = "2s"
compact_min_small_files = 4
small_file_size = "1MiB"
compact_target_size = "8MiB"
zorder_idle = "3s"
lease_ttl = "10s"
[erasure]
interval = "3s"
suppression_refresh = "1s"
[[sources]]
kind = "kafka"
name = "k"
brokers = "{brokers}"
topics = ["{TOPIC}"]
group_id = "g-soak"
[[tables]]
name = "events"
source = "k"
zorder_by = ["user_id"]
{EVENT_COLUMNS}
"#,
            root = lake.root(),
            brokers = tansu.bootstrap,
        ),
    )
    .unwrap();
    path
}

/// Produces `rate` events/s until `stop`; returns (event id, user) of each.
fn produce_steadily(tansu: &Tansu, rate: f64, stop: Arc<AtomicBool>) -> Vec<(String, String)> {
    let producer = tansu.producer();
    let mut sent = Vec::new();
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate) as usize;
        while sent.len() < due {
            let n = sent.len();
            let id = format!("e-{n}");
            let user = format!("u-{}", n % USERS);
            let payload = format!(
                r#"{{"event_id":"{id}","user_id":"{user}","amount":{n}.5,"event_time":"2024-05-01T12:00:{:02}Z"}}"#,
                n % 60
            );
            broker::send(&producer, TOPIC, &user, payload.as_bytes()).expect("send");
            sent.push((id, user));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    broker::flush(&producer).expect("flush");
    sent
}

/// Files an erasure request for the erased user from the CLI, as the
/// privacy team would.
fn request_erasure(config: &Path) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["-q", "forget", "--config"])
        .arg(config)
        .args([
            "request",
            "--key",
            &format!("user_id={ERASED}"),
            "--all",
            "--reason",
            "soak",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sluice forget request: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_every_few_seconds_on_tansu_stay_exactly_once() {
    let seconds = setting("SLUICE_SOAK_SECONDS", 45.0);
    let kill_every = Duration::from_secs_f64(setting("SLUICE_SOAK_KILL_EVERY", 12.0));
    let rate = setting("SLUICE_SOAK_RATE", 300.0);
    let tansu = Arc::new(Tansu::start());
    tansu.create_topic(TOPIC, PARTITIONS).await;
    let lake = Lake::new();
    let config_path = write_config(&lake, &tansu);
    let config = parse_valid(&std::fs::read_to_string(&config_path).unwrap());

    let mut workers: Vec<ServeProcess> = (0..3)
        .map(|i| ServeProcess::start_as(&config_path, &format!("soak-{i}")))
        .collect();
    for w in &workers {
        w.wait_ready();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let producing = {
        let (tansu, stop) = (tansu.clone(), stop.clone());
        tokio::task::spawn_blocking(move || produce_steadily(&tansu, rate, stop))
    };

    let started = Instant::now();
    let run = Duration::from_secs_f64(seconds);
    let (mut kills, mut fenced_seen) = (0usize, 0.0);
    let mut requested = false;
    while started.elapsed() < run {
        tokio::time::sleep(kill_every.min(run.saturating_sub(started.elapsed()))).await;
        if !requested && started.elapsed() >= run / 2 {
            request_erasure(&config_path);
            requested = true;
        }
        if started.elapsed() >= run {
            break;
        }
        let slot = kills % workers.len();
        fenced_seen += value(&workers[slot].scrape(), "sluice_batches_fenced_total").unwrap_or(0.0);
        let mut victim = workers.remove(slot);
        victim.child.kill().unwrap();
        victim.child.wait().unwrap();
        kills += 1;
        let restarted = ServeProcess::start_as(&config_path, &victim.worker);
        workers.insert(slot, restarted);
    }
    if !requested {
        request_erasure(&config_path);
    }
    stop.store(true, Ordering::Relaxed);
    let sent = producing.await.unwrap();
    let expected: Vec<String> = sent
        .iter()
        .filter(|(_, user)| user != ERASED)
        .map(|(id, _)| id.clone())
        .collect();

    // Every event but the erased user's lands; the erased user's rows go.
    let table = lake.table("events");
    let deadline = Instant::now() + Duration::from_secs(180);
    let ids = loop {
        let batches = kernel_read(&table).await;
        let ids = strings(&batches, "event_id");
        let erased_left = strings(&batches, "user_id")
            .iter()
            .filter(|u| *u == ERASED)
            .count();
        if ids.len() == expected.len() && erased_left == 0 {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "after {kills} kills: {} rows of {} expected, {erased_left} of {ERASED} left",
            ids.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    for w in &workers {
        fenced_seen += value(&w.scrape(), "sluice_batches_fenced_total").unwrap_or(0.0);
    }
    for w in workers {
        assert!(w.terminate().success());
    }
    assert_exactly_once(ids, &expected);

    let url = sluice::table::resolve_existing(table.to_str().unwrap()).unwrap();
    let status = sluice::status::table_status(&url, &no_options(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        status.partitions.len(),
        PARTITIONS as usize,
        "{:?}",
        status.partitions
    );
    for p in &status.partitions {
        assert!(p.contiguous && p.counts_add_up, "{p:?}");
    }
    let commits: u64 = status.partitions.iter().map(|p| p.commits).sum();
    let rewrites = commits_with_operation(&table, "OPTIMIZE").len();
    let requests = crate::erasure::ledger_requests(&config).await;
    assert_eq!(requests.len(), 1);
    assert!(
        matches!(
            requests[0].state(),
            State::Deleted | State::Purged | State::Verified
        ),
        "{:?}",
        requests[0].state()
    );
    println!(
        "soak: {seconds:.0} s, {kills} kills, {} events sent, {} exactly once, {} of {ERASED} erased, \
         {commits} partition commits, {fenced_seen:.0} fenced batches (counted by live workers), {rewrites} rewrites",
        sent.len(),
        expected.len(),
        sent.len() - expected.len(),
    );
    register_for_spark(&table, "soak", expected.len());
}
