//! tansu, an independent Kafka broker (crates.io `tansu`, built once by
//! `scripts/test` and cached under `~/.cache/sluice-tansu`), started on a
//! free 127.0.0.1 port with in-memory storage and stopped on drop.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::BaseProducer;
use rdkafka::ClientConfig;

/// A tansu broker process.
pub struct Tansu {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub bootstrap: String,
}

fn binary() -> PathBuf {
    let path = std::env::var("SLUICE_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sluice-tansu/bin/tansu")
        });
    assert!(
        path.exists(),
        "no tansu at {}: run scripts/test, which builds it (or set SLUICE_TANSU)",
        path.display()
    );
    path
}

impl Tansu {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let bootstrap = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while TcpStream::connect(&bootstrap).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tansu never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, bootstrap }
    }

    /// Creates `topic` with `partitions` partitions.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let created = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap();
        for result in created {
            result.unwrap_or_else(|(topic, error)| panic!("create {topic}: {error}"));
        }
    }

    /// A producer that sends each record in a batch of its own: tansu
    /// 0.6.0 answers a fetch that starts inside a record batch with the next
    /// batch, skipping the rest of that one (see the test below), so a
    /// consumer resuming mid-batch would miss records through no fault of
    /// its own.
    pub fn producer(&self) -> BaseProducer {
        self.producer_with(&[("linger.ms", "0"), ("batch.num.messages", "1")])
    }

    pub fn producer_with(&self, settings: &[(&str, &str)]) -> BaseProducer {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in settings {
            config.set(*key, *value);
        }
        config.create().unwrap()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tansu's actual behaviour, which the soak's producer works around: ten
/// records sent as one batch, then a consumer assigned at offset 3 is
/// served offset 10 first (Kafka serves the batch holding offset 3 and the
/// client drops offsets 0-2). If this fails, tansu serves fetches from the
/// middle of a batch correctly and the one-record batches can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_skips_the_rest_of_a_batch_fetched_from_its_middle() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, Producer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    let tansu = Tansu::start();
    tansu.create_topic("batches", 1).await;
    let producer = tansu.producer_with(&[("linger.ms", "100")]);
    for round in 0..2 {
        for n in 0..10 {
            producer
                .send(BaseRecord::<(), _>::to("batches").payload(&format!("{round}-{n}")))
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &tansu.bootstrap)
        .set("group.id", "batches")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let first_served = |offset: i64| {
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset("batches", 0, Offset::Offset(offset))
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nothing served"
            );
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                return message.offset();
            }
        }
    };
    assert_eq!(first_served(0), 0);
    assert_eq!(first_served(3), 10, "offsets 3-9 are skipped");
}
