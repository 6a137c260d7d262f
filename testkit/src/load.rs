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
    /// Every batch sent (acknowledged or not): its Idempotency-Key and how many commands it
    /// holds, so an audit can tell that each is in the log whole or not at all.
    pub batches: Vec<(String, usize)>,
    /// Every attempt that was retried: when it failed, which producer URL it went to, how.
    pub failed_attempts: Vec<(std::time::Instant, String, FailedAttempt)>,
}

/// How an attempt failed (it was retried with the same Idempotency-Key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedAttempt {
    /// The producer answered 429 or 5xx (503: nothing appended, or the outcome unknown).
    Answered(u16),
    /// No answer: connection refused or dropped, or a timeout.
    NoAnswer,
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
    /// One request in this many is an atomic batch (`POST /commands`): new products and
    /// stock changes on the shared ones, so it spans several partitions. 0: no batches.
    pub batch_every: u32,
}

impl Default for LoadPlan {
    fn default() -> Self {
        LoadPlan {
            writers: 8,
            shared_products: 4,
            pause: Duration::from_millis(20),
            give_up_after: Duration::from_secs(120),
            batch_every: 5,
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
            let acks = send(&client, &url, create_body(), &plan, &mut setup).await;
            let ack = acks.into_iter().next().expect("create a shared product");
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
                    let body =
                        if plan.batch_every > 0 && rand::rng().random_ratio(1, plan.batch_every) {
                            batch_body(&shared)
                        } else if rand::rng().random_ratio(1, 10) {
                            create_body()
                        } else {
                            let id = &shared[rand::rng().random_range(0..shared.len())];
                            let delta = if rand::rng().random_bool(0.5) { -1 } else { 2 };
                            Body::Stock(id.clone(), json!({"delta": delta, "reason": "load"}))
                        };
                    let acks = send(&client, &url, body, &plan, &mut report).await;
                    report.acks.extend(acks);
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
            all.batches.extend(report.batches);
            all.failed_attempts.extend(report.failed_attempts);
        }
        all
    }
}

enum Body {
    Create(Value),
    Stock(String, Value),
    /// `POST /commands`: its commands, applied all or none.
    Batch(Value),
}

/// 2-5 commands: one or two new products and stock added to shared ones (added, so the batch
/// is never refused for stock), products that hash to different partitions.
fn batch_body(shared: &[String]) -> Body {
    let mut rng = rand::rng();
    let mut commands = Vec::new();
    for _ in 0..rng.random_range(1..=2) {
        let Body::Create(mut create) = create_body() else {
            unreachable!("create_body makes a create")
        };
        create["op"] = "create".into();
        commands.push(create);
    }
    for _ in 0..rng.random_range(1..=3) {
        let id = &shared[rng.random_range(0..shared.len())];
        commands.push(json!({"op": "adjust_stock", "id": id, "delta": 1, "reason": "batch"}));
    }
    Body::Batch(json!({ "commands": commands }))
}

fn create_body() -> Body {
    Body::Create(json!({
        "name": "Chaos lamp",
        "price_cents": 1999,
        "stock": 1_000,
        "seller_id": "chaos",
    }))
}

/// Sends one request with a fresh Idempotency-Key, retrying with that key until a final
/// answer: one [`Ack`] per command it acknowledged, none when the producer refused it (4xx).
async fn send(
    client: &reqwest::Client,
    urls: &[String],
    body: Body,
    plan: &LoadPlan,
    report: &mut WriterReport,
) -> Vec<Ack> {
    let key = crate::unique("cmd");
    let (path, json) = match &body {
        Body::Create(json) => ("/products".to_owned(), json),
        Body::Stock(id, json) => (format!("/products/{id}/stock"), json),
        Body::Batch(json) => {
            let commands = json["commands"].as_array().map_or(0, Vec::len);
            report.batches.push((key.clone(), commands));
            ("/commands".to_owned(), json)
        }
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
                let at = std::time::Instant::now();
                // A batch answers each command in `results`; a single command is its own.
                let results = match answer["results"].as_array() {
                    Some(results) => results.clone(),
                    None => vec![answer],
                };
                return results
                    .iter()
                    .map(|result| Ack {
                        idempotency_key: key.clone(),
                        product_id: result["id"].as_str().expect("id").to_owned(),
                        version: result["version"].as_i64().expect("version"),
                        position: result["position"].as_str().expect("position").to_owned(),
                        at,
                    })
                    .collect();
            }
            Ok(response) if response.status().is_client_error() && response.status() != 429 => {
                report.refused += 1;
                return Vec::new();
            }
            // 429, 503, other 5xx: same key again.
            Ok(response) => {
                report.retries += 1;
                report.failed_attempts.push((
                    std::time::Instant::now(),
                    url.clone(),
                    FailedAttempt::Answered(response.status().as_u16()),
                ));
            }
            // Timeouts, refused or dropped connections: same key, at the next instance.
            Err(_) => {
                report.retries += 1;
                report.failed_attempts.push((
                    std::time::Instant::now(),
                    url.clone(),
                    FailedAttempt::NoAnswer,
                ));
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
