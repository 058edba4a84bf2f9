//! `sluice serve` as a real process: probes, Prometheus metrics that move,
//! lag that falls to zero when the stream is idle, and a SIGTERM drain that
//! turns `/readyz` false first and loses nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// `GET path` against `address`: (status code, body).
fn get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Parses Prometheus text strictly: every sample belongs to a family
/// declared by `# HELP` and `# TYPE`, names and labels are well formed, and
/// values are numbers. Returns `(name{labels}, value)` pairs.
pub fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut declared = std::collections::HashSet::new();
    let mut samples = Vec::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(name_ok(name), "bad family name in {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            declared.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad metric name: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels: {line}"
                );
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (key, value) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(name_ok(key), "bad label name: {line}");
                    assert!(!value.trim_end_matches('"').contains('\n'));
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
            .unwrap_or(name);
        assert!(
            declared.contains(family),
            "sample before its # TYPE: {line}"
        );
        samples.push((series.to_string(), value));
    }
    samples
}

pub fn value(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

/// A `sluice serve` process listening on a loopback port.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub address: String,
    /// The worker id it runs with.
    pub worker: String,
}

impl ServeProcess {
    /// A worker with an id of its own (workers on one host need distinct
    /// ids: the id is the Kafka static member id).
    pub fn start(config: &std::path::Path) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self::start_as(config, &format!("worker-{}-{n}", std::process::id()))
    }

    /// A worker with id `worker` (the same id as a stopped worker takes its
    /// place in the Kafka group).
    pub fn start_as(config: &std::path::Path, worker: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["-q", "serve", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--worker-id", worker])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sluice serve");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let address = first
            .trim()
            .rsplit("http://")
            .next()
            .expect("listening line")
            .to_string();
        Self {
            child,
            address,
            worker: worker.to_string(),
        }
    }

    pub fn wait_ready(&self) {
        wait_until(Duration::from_secs(30), "ready", || {
            get(&self.address, "/readyz").is_some_and(|(status, _)| status == 200)
        });
    }

    /// The metrics, parsed.
    pub fn scrape(&self) -> Vec<(String, f64)> {
        get(&self.address, "/metrics")
            .map(|(_, body)| parse_prometheus(&body))
            .unwrap_or_default()
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        self.child.wait().unwrap()
    }
}

pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exposes_moving_metrics_and_drains_on_sigterm() {
    let lake = Lake::new();
    let topic = "serve";
    let kafka = kafka(topic, 2);
    let config_path = lake.dir.path().join("serve.toml");
    let config = format!(
        r#"
[lake]
root = "{root}"
[batching]
max_latency = "500ms"
[service]
drain_delay = "1500ms"
[[sources]]
kind = "kafka"
name = "k"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "g-serve"
properties = {{ "statistics.interval.ms" = "300" }}
[[tables]]
name = "events"
source = "k"
{EVENT_COLUMNS}
"#,
        root = lake.root(),
        brokers = kafka.bootstrap_servers(),
    );
    std::fs::write(&config_path, config).unwrap();
    let ServeProcess {
        mut child, address, ..
    } = ServeProcess::start(&config_path);

    assert_eq!(get(&address, "/healthz").unwrap().0, 200);
    wait_until(Duration::from_secs(30), "ready", || {
        get(&address, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    assert_eq!(get(&address, "/nope").unwrap().0, 404);
    let before = parse_prometheus(&get(&address, "/metrics").unwrap().1);
    assert_eq!(value(&before, "sluice_records_committed_total"), Some(0.0));

    let mut good = produce(&kafka, topic, "a", 3000, 0);
    let scrape = || parse_prometheus(&get(&address, "/metrics").unwrap().1);
    wait_until(Duration::from_secs(60), "records committed", || {
        value(&scrape(), "sluice_records_committed_total") == Some(3000.0)
    });
    // Idle stream: the lag of both partitions falls to zero.
    wait_until(Duration::from_secs(30), "lag at zero", || {
        let samples = scrape();
        let lags: Vec<f64> = samples
            .iter()
            .filter(|(s, _)| s.starts_with("sluice_consumer_lag_records{"))
            .map(|(_, v)| *v)
            .collect();
        lags.len() == 2 && lags.iter().all(|v| *v == 0.0)
    });
    let after = scrape();
    assert!(value(&after, "sluice_commits_total").unwrap() >= 1.0);
    assert!(value(&after, "sluice_bytes_written_total").unwrap() > 0.0);
    assert!(value(&after, "sluice_commit_duration_seconds_count").unwrap() >= 1.0);
    assert_eq!(value(&after, "sluice_ready"), Some(1.0));
    assert!(after
        .iter()
        .any(|(s, _)| s.starts_with("sluice_freshness_seconds{table=\"events\"}")));

    // More records, then SIGTERM: readiness drops first, then everything held is committed.
    good.extend(produce(&kafka, topic, "b", 2000, 0));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until(Duration::from_secs(5), "readyz 503", || {
        get(&address, "/readyz").is_some_and(|(status, _)| status == 503)
    });
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        exit.success(),
        "sluice serve exits 0 after draining: {exit:?}"
    );
    let drained = strings(&kernel_read(&lake.table("events")).await, "event_id");
    assert!(drained.len() >= 3000, "the first records stay committed");
    // Whatever the drained worker had not fetched, the next one picks up: exactly once overall.
    let config = sluice::config::Config::load(&config_path).unwrap();
    let next = Running::start(&config);
    let rest = (good.len() - drained.len()) as u64;
    next.wait_for(Duration::from_secs(60), "the rest", |s| s.committed >= rest)
        .await;
    next.stop().await;
    let ids = strings(&kernel_read(&lake.table("events")).await, "event_id");
    assert_exactly_once(ids, &good);
}
