//! An in-process Kafka broker (librdkafka's mock cluster) that speaks the real
//! protocol on a loopback TCP port, with a producer for it.
//!
//! The cluster lives on its own thread (its handle is not `Send`) until the
//! [`EmbeddedKafka`] is dropped.

use std::sync::mpsc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

/// A running in-process Kafka cluster.
pub struct EmbeddedKafka {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster with `topic` created with `partitions` partitions.
    pub fn start(topic: &str, partitions: i32) -> Result<Self, String> {
        Self::start_with(&[(topic.to_string(), partitions)])
    }

    /// Starts a one-broker cluster with each `(topic, partitions)` created.
    pub fn start_with(topics: &[(String, i32)]) -> Result<Self, String> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let topics = topics.to_vec();
        // The mock cluster makes a topic in about a tenth of a second.
        let patience = Duration::from_secs(30) + Duration::from_millis(500) * topics.len() as u32;
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start mock cluster: {e}")));
                        return;
                    }
                };
                for (topic, partitions) in &topics {
                    if let Err(e) = cluster.create_topic(topic, *partitions, 1) {
                        let _ = ready_tx.send(Err(format!("cannot create topic {topic}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .map_err(|e| e.to_string())?;
        let bootstrap = ready_rx
            .recv_timeout(patience)
            .map_err(|_| "mock cluster did not start".to_string())??;
        Ok(Self {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `bootstrap.servers` for clients (a 127.0.0.1 address).
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// A producer for the cluster (librdkafka's default 5 ms linger).
    /// Producing to a topic the cluster lacks creates it with the broker's
    /// default partition count; callers that need a count should name the
    /// topic in [`EmbeddedKafka::start_with`].
    pub fn producer(&self) -> Result<BaseProducer, String> {
        self.producer_lingering(5)
    }

    /// A producer that waits up to `linger_ms` to fill a partition's batch.
    /// The embedded broker serves one producer batch per partition per
    /// fetch, so the batches' size bounds how fast a consumer reads.
    pub fn producer_lingering(&self, linger_ms: u64) -> Result<BaseProducer, String> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", linger_ms.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "65536")
            .create()
            .map_err(|e| format!("cannot create producer: {e}"))
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends one record, waiting while the producer queue is full.
pub fn send<K: rdkafka::message::ToBytes + ?Sized>(
    producer: &BaseProducer,
    topic: &str,
    key: &K,
    payload: &[u8],
) -> Result<(), String> {
    let mut record = BaseRecord::to(topic).payload(payload);
    if !key.to_bytes().is_empty() {
        record = record.key(key);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(format!("produce to {topic}: {e}")),
        }
    }
}

/// Waits until every produced record is acknowledged.
pub fn flush(producer: &BaseProducer) -> Result<(), String> {
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| format!("producer flush: {e}"))
}
