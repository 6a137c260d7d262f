//! Starting producers in-process against the real stack, and reading back what they wrote.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use foldline_producer::Config;
use foldline_schemas::wire::EventCodec;
use foldline_schemas::Envelope;
use rdkafka::Message;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Producer {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A producer on a fresh random topic (and transactional id).
pub fn config() -> Config {
    let mut config = Config::local();
    config.log.brokers = foldline_testkit::brokers();
    config.log.registry_url = foldline_testkit::registry_url();
    config.log.topic = foldline_testkit::unique("products");
    config.transactional_id = foldline_testkit::unique("producer");
    config.auth.jwt_secret = Some(foldline_testkit::auth::secret());
    config
}

impl Producer {
    pub async fn start(config: Config) -> Producer {
        foldline_service::telemetry::init("info,rdkafka::client=off,librdkafka=warn");
        let listener = foldline_testkit::listener().await;
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(foldline_producer::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let producer = Producer {
            url,
            stop: Some(stop),
            handle: Some(handle),
        };
        producer.wait_ready(Duration::from_secs(60)).await;
        producer
    }

    pub async fn wait_ready(&self, limit: Duration) {
        let client = foldline_testkit::auth::client();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(r) = client.get(format!("{}/ready", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "producer not ready in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Graceful stop; waits until the server has finished.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    pub fn post(&self, path: &str, body: Value) -> reqwest::RequestBuilder {
        foldline_testkit::auth::client()
            .post(format!("{}{path}", self.url))
            .json(&body)
    }

    pub async fn create(&self, stock: i64) -> String {
        let response = self
            .post(
                "/products",
                json!({"name": "Lamp", "price_cents": 1999, "stock": stock, "seller_id": "s1"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }
}

/// Every event of `topic` with its partition and offset, decoded through the registry.
pub async fn read_topic(brokers: &str, topic: &str) -> Vec<(Envelope, i32, i64)> {
    let codec = EventCodec::new(&foldline_testkit::registry_url(), topic).unwrap();
    let mut events = Vec::new();
    for message in foldline_testkit::read_all(brokers, topic).await {
        let envelope = codec.decode(message.payload().unwrap()).await.unwrap();
        events.push((envelope, message.partition(), message.offset()));
    }
    events
}

/// Asserts each product's versions in the log are 1, 2, 3 ... with no gap or repeat.
pub fn assert_gap_free(events: &[(Envelope, i32, i64)]) -> HashMap<String, i64> {
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut sorted: Vec<&(Envelope, i32, i64)> = events.iter().collect();
    sorted.sort_by_key(|(_, p, o)| (*p, *o));
    for (envelope, _, _) in sorted {
        let previous = last.entry(envelope.product_id.clone()).or_insert(0);
        assert_eq!(
            envelope.version,
            *previous + 1,
            "product {} jumps from version {} to {}",
            envelope.product_id,
            previous,
            envelope.version
        );
        *previous = envelope.version;
    }
    last
}
