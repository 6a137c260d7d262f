//! A stack per test: a fresh database, a random topic, the producer, the query API and
//! projectors as real processes (so they can be killed), and the fold of the topic to
//! compare the read model with.

#![allow(dead_code)]

pub mod chaos;

use std::collections::BTreeMap;
use std::time::Duration;

use foldline_producer::domain::{evolve, Product};
use foldline_schemas::wire::EventCodec;
use foldline_schemas::Envelope;
use foldline_testkit::process::Spawned;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::Message;
use serde_json::{json, Value};

pub const THRESHOLD: i64 = 5;
/// Stock changes of the mixed load: mostly small decrements, so some go below the threshold
/// and some are refused with 409.
const DELTAS: [i64; 5] = [-4, -3, -1, 2, 3];

pub struct Stack {
    pub database_url: String,
    pub topic: String,
    pub dlq: String,
    pub producer: Spawned,
    pub query: Spawned,
    pub http: reqwest::Client,
}

impl Stack {
    pub async fn start() -> Stack {
        let database_url = foldline_testkit::postgres::fresh_database().await;
        let topic = foldline_testkit::unique("products");
        let dlq = format!("{topic}.dlq");
        foldline_service::kafka::ensure_topic(&foldline_testkit::brokers(), &dlq, 1, &[])
            .await
            .unwrap();
        let producer = Spawned::producer(&topic).await;
        let query = Spawned::start(
            "foldline-query",
            "FOLDLINE_QUERY_LISTEN",
            &[
                ("FOLDLINE_DATABASE_URL", database_url.clone()),
                ("FOLDLINE_TOPIC", topic.clone()),
            ],
        )
        .await;
        Stack {
            database_url,
            topic,
            dlq,
            producer,
            query,
            http: foldline_testkit::auth::client(),
        }
    }

    pub fn projector_env(&self, group: &str) -> Vec<(&'static str, String)> {
        vec![
            ("FOLDLINE_DATABASE_URL", self.database_url.clone()),
            ("FOLDLINE_TOPIC", self.topic.clone()),
            ("FOLDLINE_DLQ_TOPIC", self.dlq.clone()),
            ("FOLDLINE_PROJECTOR_GROUP", group.to_owned()),
            ("LOW_STOCK_THRESHOLD", THRESHOLD.to_string()),
        ]
    }

    pub async fn projector(&self, group: &str) -> Spawned {
        Spawned::start(
            "foldline-projector",
            "FOLDLINE_PROJECTOR_LISTEN",
            &self.projector_env(group),
        )
        .await
    }

    /// Runs `foldline-projector replay ARGS…` for `group` (with `env` on top) and returns
    /// its output, whatever its exit status.
    pub async fn replay(
        &self,
        group: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> std::process::Output {
        let mut all = self.projector_env(group);
        all.push((
            "FOLDLINE_PROJECTOR_LISTEN",
            format!("127.0.0.1:{}", foldline_testkit::process::free_port()),
        ));
        tokio::process::Command::new(foldline_testkit::process::binary("foldline-projector"))
            .args(["replay", "--drop-grace-ms", "300"])
            .args(args)
            .envs(all.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .output()
            .await
            .unwrap()
    }

    /// `foldline verify --quiet ARGS…` against this stack's topic and read model (projector
    /// group `group`), with `env` on top: (exit code, stdout).
    pub fn verify(
        &self,
        group: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Option<i32>, String) {
        let output = std::process::Command::new(foldline_testkit::process::binary("foldline"))
            .args(["verify", "--quiet"])
            .args(args)
            .env("FOLDLINE_TOPIC", &self.topic)
            .env("FOLDLINE_DATABASE_URL", &self.database_url)
            .env("FOLDLINE_PROJECTOR_GROUP", group)
            .env("LOW_STOCK_THRESHOLD", THRESHOLD.to_string())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    /// A recent-events consumer on this stack's topic, with a table and group of its own.
    pub async fn recent_events(&self, prefix: &str) -> Spawned {
        Spawned::start(
            "foldline-recent-events",
            "FOLDLINE_RECENT_EVENTS_LISTEN",
            &[
                ("FOLDLINE_TOPIC", self.topic.clone()),
                ("FOLDLINE_DLQ_TOPIC", self.dlq.clone()),
                (
                    "FOLDLINE_RECENT_EVENTS_TABLE",
                    foldline_testkit::unique(&format!("{prefix}RecentEvents")),
                ),
                (
                    "FOLDLINE_RECENT_EVENTS_GROUP",
                    foldline_testkit::unique(&format!("{prefix}-recent")),
                ),
            ],
        )
        .await
    }

    /// Every decodable event of the topic but those of `left_out` products, waited for in
    /// the read model and checked against it.
    pub async fn assert_model_equals_fold_without(&self, left_out: &[&String]) {
        let applied: Vec<Envelope> = self
            .topic_events()
            .await
            .into_iter()
            .filter(|e| !left_out.contains(&&e.product_id))
            .collect();
        self.wait_caught_up(applied.len()).await;
        self.assert_model_equals_fold(&applied).await;
    }

    pub async fn write(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}{path}", self.producer.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        json!({"status": status, "body": body})
    }

    /// Creates `products` products over three sellers (in batches), then runs `ops` random
    /// updates, stock changes (some to below the threshold, some refused with 409) and
    /// deletions, eight at a time. Returns the ids.
    pub async fn mixed_load(&self, products: usize, ops: usize, seed: u64) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ids = Vec::new();
        for chunk in (0..products).collect::<Vec<_>>().chunks(10) {
            let commands: Vec<Value> = chunk
                .iter()
                .map(|i| json!({"op": "create", "name": format!("item {i}"), "price_cents": 100 + *i as i64,
                               "stock": 3 + (*i as i64 % 10), "seller_id": format!("seller-{}", i % 3)}))
                .collect();
            let answer =
                foldline_testkit::writes::post_commands(&self.http, &self.producer.url, &commands)
                    .await;
            for result in answer["results"].as_array().unwrap() {
                ids.push(result["id"].as_str().unwrap().to_owned());
            }
        }
        let mut planned = Vec::new();
        for _ in 0..ops {
            let id = ids[rng.random_range(0..ids.len())].clone();
            planned.push(match rng.random_range(0..10) {
                0 => (
                    reqwest::Method::DELETE,
                    format!("/products/{id}"),
                    Value::Null,
                ),
                1..=2 => (
                    reqwest::Method::PATCH,
                    format!("/products/{id}"),
                    json!({"price_cents": rng.random_range(0..5000)}),
                ),
                _ => (
                    reqwest::Method::POST,
                    format!("/products/{id}/stock"),
                    json!({"delta": DELTAS[rng.random_range(0..DELTAS.len())]}),
                ),
            });
        }
        for group in planned.chunks(8) {
            let writes = group
                .iter()
                .map(|(m, path, body)| self.write(m.clone(), path, body.clone()));
            for answer in futures::future::join_all(writes).await {
                let status = answer["status"].as_u64().unwrap();
                assert!(
                    [200, 404, 409].contains(&status),
                    "unexpected answer {answer}"
                );
            }
        }
        ids
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.query.url))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the read model holds as many events as the topic.
    pub async fn wait_caught_up(&self, events: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let (status, summary) = self.get("/analytics/summary").await;
            if status == 200 && summary["total_events"].as_u64() == Some(events as u64) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "read model not caught up: {summary} (want {events} events)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The read model answers exactly what folding the topic gives: every product (deleted
    /// ones 404), every seller's stats, and the event counts by type.
    pub async fn assert_model_equals_fold(&self, events: &[Envelope]) {
        let mut products: BTreeMap<String, Product> = BTreeMap::new();
        for event in events {
            let current = products.remove(&event.product_id);
            if let Some(next) = evolve(current, event) {
                products.insert(event.product_id.clone(), next);
            }
        }
        for (id, expected) in &products {
            let (status, got) = self.get(&format!("/products/{id}")).await;
            if expected.deleted {
                assert_eq!(status, 404, "deleted product {id} must be gone: {got}");
                continue;
            }
            assert_eq!(status, 200, "{id}: {got}");
            assert_eq!(
                (
                    got["name"].as_str().unwrap(),
                    got["price_cents"].as_i64().unwrap(),
                    got["stock"].as_i64().unwrap(),
                    got["seller_id"].as_str().unwrap(),
                    got["version"].as_i64().unwrap(),
                    got["low_stock_threshold"].as_i64()
                ),
                (
                    expected.name.as_str(),
                    expected.price_cents,
                    expected.stock,
                    expected.seller_id.as_str(),
                    expected.version,
                    expected.low_stock_threshold
                ),
                "product {id}"
            );
        }
        self.assert_histories_equal(events).await;
        let mut sellers: BTreeMap<&str, [i64; 4]> = BTreeMap::new();
        for p in products.values() {
            let entry = sellers.entry(p.seller_id.as_str()).or_default();
            if !p.deleted {
                entry[0] += 1;
                entry[1] += p.stock;
                entry[2] += p.stock * p.price_cents;
                entry[3] += i64::from(p.stock < p.threshold(THRESHOLD));
            }
        }
        for (seller, [count, stock, value, low]) in sellers {
            let (status, got) = self.get(&format!("/sellers/{seller}/stats")).await;
            assert_eq!(status, 200);
            assert_eq!(
                got,
                json!({"products": count, "total_stock": stock, "stock_value_cents": value, "low_stock_products": low}),
                "seller {seller}"
            );
        }
        let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
        for event in events {
            *by_type.entry(event.event_type().to_string()).or_default() += 1;
        }
        let (_, summary) = self.get("/analytics/summary").await;
        assert_eq!(
            summary["events_by_type"],
            json!(by_type),
            "analytics by type"
        );
        assert_eq!(summary["total_events"], json!(events.len()));
        let hourly: u64 = summary["hourly"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["events"].as_u64().unwrap())
            .sum();
        assert_eq!(
            hourly,
            events.len() as u64,
            "every event of this test is in the last 24 hours"
        );
    }

    /// Every product's history (`/products/{id}/history`) is its events of the topic, in
    /// version order, each with its type, actor, correlation id and payload — deleted
    /// products' too.
    pub async fn assert_histories_equal(&self, events: &[Envelope]) {
        let mut by_product: BTreeMap<&str, Vec<&Envelope>> = BTreeMap::new();
        for event in events {
            by_product.entry(&event.product_id).or_default().push(event);
        }
        for (id, expected) in by_product {
            // Page by page: a chaos run's product has thousands of events.
            let mut got: Vec<Value> = Vec::new();
            let mut from = Some(1);
            while let Some(version) = from {
                let path = format!("/products/{id}/history?limit=1000&from_version={version}");
                let (status, page) = self.get(&path).await;
                assert_eq!(status, 200, "history of {id}: {page}");
                got.extend(page["events"].as_array().unwrap().iter().cloned());
                from = page["next_from_version"].as_i64();
            }
            let want: Vec<Value> = expected
                .iter()
                .map(|e| {
                    let tagged = serde_json::to_value(&e.payload).unwrap();
                    json!({
                        "version": e.version, "type": e.event_type().to_string(),
                        "actor": e.actor, "correlation_id": e.correlation_id,
                        "payload": tagged["payload"],
                    })
                })
                .collect();
            let got_compared: Vec<Value> = got
                .iter()
                .map(|e| {
                    json!({
                        "version": e["version"], "type": e["type"], "actor": e["actor"],
                        "correlation_id": e["correlation_id"], "payload": e["payload"],
                    })
                })
                .collect();
            assert_eq!(got_compared, want, "history of {id}");
            assert!(
                got.iter()
                    .all(|e| e["position"].as_str().is_some_and(|p| p.contains(':'))),
                "every event has its position"
            );
        }
    }

    /// Every decodable event of the topic, in log order per partition.
    pub async fn topic_events(&self) -> Vec<Envelope> {
        let codec = EventCodec::new(&foldline_testkit::registry_url(), &self.topic).unwrap();
        let mut events = Vec::new();
        for message in foldline_testkit::read_all(&foldline_testkit::brokers(), &self.topic).await {
            if let Ok(event) = codec.decode(message.payload().unwrap_or_default()).await {
                events.push(event);
            }
        }
        events
    }
}

/// An event as a writer other than the producer appends it (tests that write raw records):
/// `writer` is its correlation id and actor.
pub fn raw_event(
    writer: &str,
    id: &str,
    version: i64,
    payload: foldline_schemas::Payload,
) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        product_id: id.to_owned(),
        version,
        occurred_at: chrono::Utc::now(),
        correlation_id: writer.to_owned(),
        idempotency_key: None,
        command_index: None,
        payload,
        actor: Some(writer.to_owned()),
    }
}
