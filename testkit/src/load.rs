//! Concurrent writers that behave like well-written clients: every command carries its own
//! `Idempotency-Key`, and a 503, a 5xx, a timeout or a dropped connection is retried with the
//! same key until the producer answers (so a producer killed mid-commit, then restarted, must
//! neither lose nor double the command). Each acknowledged answer is recorded for an audit.

use std::sync::Arc;
use std::time::Duration;

use foldline_service::retry::{self, Delays};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A command the producer acknowledged (2xx), with what it answered.
#[derive(Debug, Clone)]
pub struct Ack {
    pub idempotency_key: String,
    pub product_id: String,
    pub version: i64,
    /// `"P:O"` of the command's last event.
    pub position: String,
    /// When the answer arrived.
    pub at: std::time::Instant,
}

#[derive(Debug, Default)]
pub struct WriterReport {
    pub acks: Vec<Ack>,
    /// Attempts that were retried (503, 5xx, timeout, connection refused or dropped).
    pub retries: u64,
    /// Commands the producer refused for good (4xx: e.g. 409 for stock that would go negative).
    pub refused: u64,
}

pub struct Writers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<WriterReport>>,
}

/// How the writers load the producer.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub writers: usize,
    /// Products created up front and shared by every writer (contention on the same product
    /// is where a doubled command shows first).
    pub shared_products: usize,
    /// Pause between one writer's commands.
    pub pause: Duration,
    /// How long one command is retried before the writer gives up (and panics: an
    /// acknowledged-or-not answer is what the audit needs).
    pub give_up_after: Duration,
}

impl Default for LoadPlan {
    fn default() -> Self {
        LoadPlan {
            writers: 8,
            shared_products: 4,
            pause: Duration::from_millis(20),
            give_up_after: Duration::from_secs(120),
        }
    }
}

impl Writers {
    /// Creates the shared products (retrying like the rest), then starts the writers. Each
    /// writer loops: a stock change on a shared product, now and then a create of its own.
    /// With several producer URLs each command goes to one at random and, when that one does
    /// not answer, to the next (what a load balancer in front of the instances does).
    pub async fn start(producer_urls: &[String], plan: LoadPlan) -> Writers {
        let client = Arc::new(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .default_headers(crate::auth::admin_headers())
                .build()
                .unwrap(),
        );
        let url = Arc::new(producer_urls.to_vec());
        let mut setup = WriterReport::default();
        let mut shared = Vec::new();
        for _ in 0..plan.shared_products {
            let ack = send(&client, &url, create_body(), &plan, &mut setup)
                .await
                .expect("create a shared product");
            shared.push(ack.product_id.clone());
            setup.acks.push(ack);
        }
        let shared = Arc::new(shared);
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut setup = Some(setup);
        for _ in 0..plan.writers {
            let (client, url, shared, plan) =
                (client.clone(), url.clone(), shared.clone(), plan.clone());
            let stopped = stopped.clone();
            let mut report = setup.take().unwrap_or_default();
            tasks.push(tokio::spawn(async move {
                while !*stopped.borrow() {
                    let body = if rand::rng().random_ratio(1, 10) {
                        create_body()
                    } else {
                        let id = &shared[rand::rng().random_range(0..shared.len())];
                        let delta = if rand::rng().random_bool(0.5) { -1 } else { 2 };
                        Body::Stock(id.clone(), json!({"delta": delta, "reason": "load"}))
                    };
                    if let Some(ack) = send(&client, &url, body, &plan, &mut report).await {
                        report.acks.push(ack);
                    }
                    tokio::time::sleep(plan.pause).await;
                }
                report
            }));
        }
        Writers { stop, tasks }
    }

    /// Acknowledged commands so far are not visible until [`Writers::stop`]; this asks each
    /// writer to finish the command it is on (retrying it to an answer) and collects reports.
    pub async fn stop(self) -> WriterReport {
        let _ = self.stop.send(true);
        let mut all = WriterReport::default();
        for task in self.tasks {
            let report = task.await.expect("writer task");
            all.acks.extend(report.acks);
            all.retries += report.retries;
            all.refused += report.refused;
        }
        all
    }
}

enum Body {
    Create(Value),
    Stock(String, Value),
}

fn create_body() -> Body {
    Body::Create(json!({
        "name": "Chaos lamp",
        "price_cents": 1999,
        "stock": 1_000,
        "seller_id": "chaos",
    }))
}

/// Sends one command with a fresh Idempotency-Key, retrying with that key until a final
/// answer. `None` when the producer refused it (4xx).
async fn send(
    client: &reqwest::Client,
    urls: &[String],
    body: Body,
    plan: &LoadPlan,
    report: &mut WriterReport,
) -> Option<Ack> {
    let key = crate::unique("cmd");
    let (path, json) = match &body {
        Body::Create(json) => ("/products".to_owned(), json),
        Body::Stock(id, json) => (format!("/products/{id}/stock"), json),
    };
    let deadline = tokio::time::Instant::now() + plan.give_up_after;
    let mut delays = Delays::new(retry::forever(
        Duration::from_millis(50),
        Duration::from_secs(1),
    ));
    let mut at = rand::rng().random_range(0..urls.len());
    loop {
        let url = &urls[at % urls.len()];
        let outcome = client
            .post(format!("{url}{path}"))
            .header("idempotency-key", &key)
            .json(json)
            .send()
            .await;
        match outcome {
            Ok(response) if response.status().is_success() => {
                let answer: Value = response.json().await.expect("a JSON answer");
                return Some(Ack {
                    idempotency_key: key,
                    product_id: answer["id"].as_str().expect("id").to_owned(),
                    version: answer["version"].as_i64().expect("version"),
                    position: answer["position"].as_str().expect("position").to_owned(),
                    at: std::time::Instant::now(),
                });
            }
            Ok(response) if response.status().is_client_error() && response.status() != 429 => {
                report.refused += 1;
                return None;
            }
            // 429, 503, other 5xx: same key again.
            Ok(_) => report.retries += 1,
            // Timeouts, refused or dropped connections: same key, at the next instance.
            Err(_) => {
                report.retries += 1;
                at += 1;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "command {key} got no final answer in {:?}",
            plan.give_up_after
        );
        // Like a well-behaved client: exponential backoff with jitter.
        tokio::time::sleep(delays.next_delay()).await;
    }
}
