//! `foldline-bench upgrade-drill`: a schema change shipped the way users ship it (issue 38).
//!
//! On the servers the environment names (`scripts/upgrade-drill` starts them), the previous
//! release's binaries run the whole system with retrying writers flowing (two producers in
//! `partitions` mode, so one is always up). Then, in the documented order, one process at a
//! time: every consumer, then each producer, replaced by the current build on the same port.
//! Then the wrong order once: a previous-release projector that meets the new events parks
//! them, is upgraded, and `parked retry` applies them. At the end: the audit of every
//! acknowledged write against the log, `foldline verify`, a rebuild across the mixed history,
//! and a restore of the archive (files written by both builds) compared with the topic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foldline_testkit::load::{FailedAttempt, LoadPlan, Writers};
use foldline_testkit::process::{free_port, Spawned};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::record::Provenance;
use crate::soak::Quantiles;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the previous release's binaries.
    #[arg(long)]
    old_bins: PathBuf,
    /// Folder of the current build's binaries.
    #[arg(long)]
    new_bins: PathBuf,
    /// The commit the previous release was built from.
    #[arg(long)]
    old_commit: String,
    /// Seconds of load on each step.
    #[arg(long, default_value_t = 12)]
    step_seconds: u64,
    /// Where to write the result (JSON).
    #[arg(long)]
    out: PathBuf,
}

/// One step of the upgrade: what ran, and write → visible through the query API meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub name: String,
    pub seconds: f64,
    /// Write (2xx) → the query API's `?after=` read of it, per probe write.
    pub visible_ms: Quantiles,
    /// Longest time in the step with no write acknowledged by any producer.
    pub write_gap_ms: f64,
    /// Attempts the producers answered 429/5xx in the step (the clients retried them): a
    /// hand-over in `partitions` mode should cause none. (None: a result from before they
    /// were counted.)
    #[serde(default)]
    pub unavailable_answers: Option<usize>,
    /// Attempts that got no answer (a restarting instance's closed port): the clients moved
    /// to the next instance, as a load balancer would.
    #[serde(default)]
    pub unanswered_attempts: Option<usize>,
    /// Of `unavailable_answers`, those answered by producers still on the previous release
    /// (their hand-over code is the previous one's).
    #[serde(default)]
    pub unavailable_from_previous_release: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WrongOrder {
    /// Products the previous-release projector parked as "written by a newer schema".
    pub parked_products: usize,
    pub parked_events: usize,
    /// After its upgrade: products `parked retry` applied, and what stayed parked.
    pub retried_products: usize,
    pub still_parked: usize,
    /// `foldline verify` of its read model afterwards.
    pub verify_passed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillResult {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub old_commit: String,
    pub steps: Vec<Step>,
    pub writes_acknowledged: usize,
    /// Attempts the clients retried (503, refused connections while a producer restarted).
    pub retries: u64,
    /// Commands refused for good (4xx; e.g. 409 for stock below zero). Not failures.
    pub refused: u64,
    /// Longest time with no write acknowledged by any producer, while writers kept sending.
    pub longest_write_gap_ms: f64,
    pub events_in_log: usize,
    pub lost: usize,
    pub doubled: usize,
    pub broken_versions: usize,
    /// Consumers that were not running (crashed) at the end of a step.
    pub consumers_stopped: usize,
    pub wrong_order: WrongOrder,
    pub verify_passed: bool,
    pub rebuild_equal: bool,
    pub restored_events: usize,
    pub restore_equal: bool,
    /// The targets: 0 lost, 0 doubled, 0 stopped, verify, rebuild and restore equal,
    /// the wrong order recovered, the longest gap ≤ 2 s, and no attempt answered 429/5xx by a
    /// producer of the current release while a producer was replaced (`partitions` mode: no
    /// outage; the previous release's answers are counted apart — its code cannot change).
    pub met: bool,
}

/// A service run from a folder of binaries, replaceable by another folder's on its port.
struct Service {
    bin: &'static str,
    listen_var: &'static str,
    env: Vec<(&'static str, String)>,
    port: u16,
    running: Spawned,
}

impl Service {
    async fn start(
        bins: &Path,
        bin: &'static str,
        listen_var: &'static str,
        mut env: Vec<(&'static str, String)>,
    ) -> Service {
        let port = free_port();
        env.push((listen_var, format!("127.0.0.1:{port}")));
        let running = spawn(bins, bin, &env, port).await;
        Service {
            bin,
            listen_var,
            env,
            port,
            running,
        }
    }

    /// SIGTERM (graceful: in-flight work finishes), then the binary of `bins` on the same
    /// port with the same settings.
    async fn upgrade(&mut self, bins: &Path) {
        assert!(
            self.running.terminate(),
            "{} did not exit cleanly on SIGTERM",
            self.bin
        );
        self.running = spawn(bins, self.bin, &self.env, self.port).await;
        let _ = self.listen_var;
    }

    fn url(&self) -> String {
        self.running.url.clone()
    }

    fn alive(&mut self) -> bool {
        self.running.is_running()
    }
}

async fn spawn(bins: &Path, bin: &str, env: &[(&str, String)], port: u16) -> Spawned {
    let path = bins.join(bin);
    let service = Spawned::spawn(&path.to_string_lossy(), &[], env, port);
    service.wait_ready(Duration::from_secs(120)).await;
    service
}

/// Write → visible probes: a stock change on a product of its own, then the query API's
/// read of it with `?after=`; samples by the step they fell in.
struct Probe {
    step: Arc<Mutex<String>>,
    samples: Arc<Mutex<BTreeMap<String, Vec<f64>>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    async fn start(producers: Vec<String>, query: String) -> Probe {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .default_headers(foldline_testkit::auth::admin_headers())
            .build()
            .expect("a client");
        let created = send_retrying(
            &client,
            &producers,
            "/products",
            &json!({"name": "Probe", "price_cents": 1, "stock": 1000, "seller_id": "probe"}),
        )
        .await;
        let product = created["id"].as_str().expect("an id").to_owned();
        let step = Arc::new(Mutex::new("old".to_owned()));
        let samples = Arc::new(Mutex::new(BTreeMap::<String, Vec<f64>>::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (step_in, samples_in) = (step.clone(), samples.clone());
        let task = tokio::spawn(async move {
            let mut delta = 1;
            while !*stopped.borrow() {
                delta = -delta;
                let path = format!("/products/{product}/stock");
                let answer =
                    send_retrying(&client, &producers, &path, &json!({"delta": delta})).await;
                let written = Instant::now();
                let position = answer["position"].as_str().unwrap_or_default().to_owned();
                let url = format!("{query}/products/{product}?after={position}&timeout_ms=10000");
                if client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
                {
                    let ms = written.elapsed().as_secs_f64() * 1000.0;
                    let name = step_in.lock().expect("not poisoned").clone();
                    samples_in
                        .lock()
                        .expect("not poisoned")
                        .entry(name)
                        .or_default()
                        .push(ms);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Probe {
            step,
            samples,
            stop,
            task,
        }
    }

    fn enter(&self, name: &str) {
        *self.step.lock().expect("not poisoned") = name.to_owned();
    }

    fn quantiles(&self, name: &str) -> Quantiles {
        let mut samples = self
            .samples
            .lock()
            .expect("not poisoned")
            .get(name)
            .cloned()
            .unwrap_or_default();
        Quantiles::of(&mut samples)
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// POSTs (or PUTs, for a threshold) `body` with one Idempotency-Key until a 2xx, trying each
/// producer in turn; panics after two minutes (the drill then fails: a write that never got
/// an answer is what it is there to find).
async fn send_retrying(
    client: &reqwest::Client,
    producers: &[String],
    path: &str,
    body: &Value,
) -> Value {
    let key = foldline_testkit::unique("drill");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut at = 0;
    loop {
        let url = format!("{}{path}", producers[at % producers.len()]);
        let request = if path.ends_with("low-stock-threshold") {
            client.put(url)
        } else {
            client.post(url)
        };
        match request
            .header("idempotency-key", &key)
            .json(body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return r.json().await.unwrap_or(Value::Null),
            Ok(r) if r.status().is_client_error() && r.status() != 429 => {
                panic!(
                    "{path}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )
            }
            Ok(_) => {}
            Err(_) => at += 1,
        }
        assert!(Instant::now() < deadline, "{path}: no answer in 2 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every parked entry of a consumer's ops route.
async fn parked(consumer: &str) -> Vec<Value> {
    let answer = reqwest::get(format!("{consumer}/parked")).await;
    match answer {
        Ok(r) if r.status() == 200 => r.json().await.unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn run_cli(bin: &Path, args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let output = std::process::Command::new(bin)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("FOLDLINE_JWT_SECRET", foldline_testkit::auth::secret())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (old, new) = (args.old_bins.as_path(), args.new_bins.as_path());
    let step = Duration::from_secs(args.step_seconds);
    let topic = foldline_testkit::unique("drill");
    let dlq = format!("{topic}.dlq");
    let brokers = foldline_testkit::brokers();
    for name in [&topic, &dlq] {
        foldline_service::kafka::ensure_topic(&brokers, name, 3, &[]).await?;
    }
    let database_url = foldline_testkit::postgres::fresh_database().await;
    let table = foldline_testkit::unique("DrillRecentEvents");
    let bucket = foldline_testkit::unique("drill-archive");
    let group = foldline_testkit::unique("drill-projector");
    let fleet = foldline_testkit::unique("drill-producer");
    let projector_env = |db: &str, group: &str| {
        vec![
            ("FOLDLINE_DATABASE_URL", db.to_owned()),
            ("FOLDLINE_TOPIC", topic.clone()),
            ("FOLDLINE_DLQ_TOPIC", dlq.clone()),
            ("FOLDLINE_PROJECTOR_GROUP", group.to_owned()),
        ]
    };
    let archive_env = vec![("FOLDLINE_ARCHIVE_BUCKET", bucket.clone())];

    // The previous release, everything.
    let mut producers = Vec::new();
    for _ in 0..2 {
        producers.push(
            Service::start(
                old,
                "foldline-producer",
                "FOLDLINE_PRODUCER_LISTEN",
                vec![
                    ("FOLDLINE_TOPIC", topic.clone()),
                    ("FOLDLINE_TRANSACTIONAL_ID", fleet.clone()),
                    ("FOLDLINE_PRODUCER_OWNERSHIP", "partitions".into()),
                    ("FOLDLINE_SNAPSHOT_INTERVAL_SECS", "5".into()),
                ],
            )
            .await,
        );
    }
    let mut consumers = vec![
        Service::start(
            old,
            "foldline-projector",
            "FOLDLINE_PROJECTOR_LISTEN",
            projector_env(&database_url, &group),
        )
        .await,
        Service::start(
            old,
            "foldline-recent-events",
            "FOLDLINE_RECENT_EVENTS_LISTEN",
            vec![
                ("FOLDLINE_TOPIC", topic.clone()),
                ("FOLDLINE_DLQ_TOPIC", dlq.clone()),
                ("FOLDLINE_RECENT_EVENTS_TABLE", table.clone()),
                (
                    "FOLDLINE_RECENT_EVENTS_GROUP",
                    foldline_testkit::unique("drill-recent"),
                ),
            ],
        )
        .await,
        Service::start(
            old,
            "foldline-archiver",
            "FOLDLINE_ARCHIVER_LISTEN",
            [
                archive_env.clone(),
                vec![
                    ("FOLDLINE_TOPIC", topic.clone()),
                    ("FOLDLINE_DLQ_TOPIC", dlq.clone()),
                    (
                        "FOLDLINE_ARCHIVER_GROUP",
                        foldline_testkit::unique("drill-archiver"),
                    ),
                    ("FOLDLINE_ARCHIVE_FILE_SECONDS", "1".into()),
                ],
            ]
            .concat(),
        )
        .await,
        Service::start(
            old,
            "foldline-notifier",
            "FOLDLINE_NOTIFIER_LISTEN",
            vec![("FOLDLINE_TOPIC", topic.clone())],
        )
        .await,
        Service::start(
            old,
            "foldline-query",
            "FOLDLINE_QUERY_LISTEN",
            vec![
                ("FOLDLINE_DATABASE_URL", database_url.clone()),
                ("FOLDLINE_TOPIC", topic.clone()),
                ("FOLDLINE_RECENT_EVENTS_TABLE", table.clone()),
            ],
        )
        .await,
    ];
    let producer_urls: Vec<String> = producers.iter().map(Service::url).collect();
    let query_url = consumers[4].url();
    let writers = Writers::start(
        &producer_urls,
        LoadPlan {
            writers: 4,
            batch_every: 0,
            ..LoadPlan::default()
        },
    )
    .await;
    let probe = Probe::start(producer_urls.clone(), query_url).await;
    let mut steps = Vec::new();
    // When each step began and ended, for its write gap once the acks are in.
    // (The producers still on the previous release during each step, to tell whose answers
    // the refused attempts were.)
    let mut windows: Vec<(Instant, Instant, Vec<String>)> = Vec::new();
    let previous_release = std::sync::Mutex::new(producer_urls.clone());
    let mut consumers_stopped = 0;
    let mut measure =
        |name: &str, started: Instant, probe: &Probe, consumers: &mut Vec<Service>| {
            consumers_stopped += consumers
                .iter_mut()
                .map(|c| usize::from(!c.alive()))
                .sum::<usize>();
            let old = previous_release.lock().expect("not poisoned").clone();
            windows.push((started, Instant::now(), old));
            steps.push(Step {
                name: name.to_owned(),
                seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                visible_ms: probe.quantiles(name),
                write_gap_ms: 0.0,
                unavailable_answers: Some(0),
                unanswered_attempts: Some(0),
                unavailable_from_previous_release: Some(0),
            });
        };
    let started = Instant::now();
    tokio::time::sleep(step).await;
    measure("old", started, &probe, &mut consumers);

    // The documented order: consumers one at a time, then the producers one at a time.
    for index in 0..consumers.len() {
        let name = format!("upgrade {}", consumers[index].bin);
        probe.enter(&name);
        let started = Instant::now();
        consumers[index].upgrade(new).await;
        tokio::time::sleep(step).await;
        measure(&name, started, &probe, &mut consumers);
    }
    for (index, producer) in producers.iter_mut().enumerate() {
        let name = format!("upgrade foldline-producer {}", index + 1);
        probe.enter(&name);
        let started = Instant::now();
        previous_release
            .lock()
            .expect("not poisoned")
            .retain(|url| *url != producer.url());
        producer.upgrade(new).await;
        tokio::time::sleep(step).await;
        measure(&name, started, &probe, &mut consumers);
    }

    // The new feature in use: thresholds set, products created with one.
    let client = reqwest::Client::builder()
        .default_headers(foldline_testkit::auth::admin_headers())
        .build()?;
    for n in 0..20 {
        let created = send_retrying(
            &client,
            &producer_urls,
            "/products",
            &json!({"name": "Threshold lamp", "price_cents": 100, "stock": 10, "seller_id": "drill",
                    "low_stock_threshold": n % 7}),
        )
        .await;
        let id = created["id"].as_str().unwrap_or_default();
        send_retrying(
            &client,
            &producer_urls,
            &format!("/products/{id}/low-stock-threshold"),
            &json!({"threshold": 12}),
        )
        .await;
    }

    // The wrong order: a previous-release projector meets events of the new schema.
    probe.enter("wrong order");
    let wrong_db = foldline_testkit::postgres::fresh_database().await;
    let wrong_group = foldline_testkit::unique("drill-wrong-order");
    let mut late = Service::start(
        old,
        "foldline-projector",
        "FOLDLINE_PROJECTOR_LISTEN",
        projector_env(&wrong_db, &wrong_group),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut entries = parked(&late.url()).await;
    while entries.len() < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        entries = parked(&late.url()).await;
    }
    let parked_products: std::collections::BTreeSet<String> = entries
        .iter()
        .filter_map(|e| e["product_id"].as_str().map(str::to_owned))
        .collect();
    let newer = entries
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("newer schema"))
        })
        .count();
    late.upgrade(new).await;
    // As an operator would: list what is parked, retry each product, until nothing is (it
    // may have parked more between the first listing and its upgrade).
    let mut retried = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let products: std::collections::BTreeSet<String> = parked(&late.url())
            .await
            .iter()
            .filter_map(|e| e["product_id"].as_str().map(str::to_owned))
            .collect();
        if products.is_empty() {
            break;
        }
        for product in products {
            let url = format!("{}/parked/{product}/retry", late.url());
            let answer = reqwest::Client::new().post(url).send().await;
            if answer.is_ok_and(|r| r.status() == 200) {
                retried.insert(product);
            }
        }
    }
    let retried = retried.len();
    let still_parked = parked(&late.url()).await.len();

    // Writes stop; every consumer drains; the checks.
    let report = writers.stop().await;
    probe.stop().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events =
        foldline_testkit::audit::read_events(&brokers, &foldline_testkit::registry_url(), &topic)
            .await;
    let audit = foldline_testkit::audit::audit(&events, &report.acks);
    let mut acks: Vec<Instant> = report.acks.iter().map(|a| a.at).collect();
    acks.sort();
    let gap_within = |from: Instant, to: Instant| {
        let mut at = from;
        let mut longest = Duration::ZERO;
        for ack in acks.iter().filter(|a| **a > from && **a <= to) {
            longest = longest.max(ack.duration_since(at));
            at = *ack;
        }
        longest.max(to.duration_since(at)).as_secs_f64() * 1000.0
    };
    for (step, (from, to, old)) in steps.iter_mut().zip(&windows) {
        step.write_gap_ms = (gap_within(*from, *to) * 10.0).round() / 10.0;
        let within = report
            .failed_attempts
            .iter()
            .filter(|(at, _, _)| at > from && at <= to);
        for (_, url, failure) in within {
            let count = match failure {
                FailedAttempt::Answered(_) => &mut step.unavailable_answers,
                FailedAttempt::NoAnswer => &mut step.unanswered_attempts,
            };
            *count = Some(count.unwrap_or(0) + 1);
            if matches!(failure, FailedAttempt::Answered(_)) {
                let by_old = &mut step.unavailable_from_previous_release;
                *by_old = Some(by_old.unwrap_or(0) + usize::from(old.contains(url)));
            }
        }
    }
    let longest_gap = acks
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    let cli = new.join("foldline");
    let verify_env = |db: &str, group: &str| {
        vec![
            ("FOLDLINE_TOPIC", topic.clone()),
            ("FOLDLINE_DATABASE_URL", db.to_owned()),
            ("FOLDLINE_PROJECTOR_GROUP", group.to_owned()),
        ]
    };
    let wait_verify = |db: String, group: String| {
        let env = verify_env(&db, &group);
        let cli = cli.clone();
        async move {
            // The projector may still be applying the last writes.
            for _ in 0..30 {
                let (ok, text) = run_cli(&cli, &["verify", "--quiet", "--only", "postgres"], &env);
                if ok {
                    return (true, text);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            run_cli(&cli, &["verify", "--quiet", "--only", "postgres"], &env)
        }
    };
    let (verify_passed, verify_text) = wait_verify(database_url.clone(), group.clone()).await;
    let (wrong_verified, wrong_text) = wait_verify(wrong_db.clone(), wrong_group.clone()).await;
    drop(late);
    let (rebuild_equal, rebuild_text) = run_cli(
        &new.join("foldline-projector"),
        &["replay", "--drop-grace-ms", "300"],
        &[
            projector_env(&database_url, &group),
            vec![(
                "FOLDLINE_PROJECTOR_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )],
        ]
        .concat(),
    );

    // The archive: the archiver flushes on a graceful stop; then a restore into a new topic.
    consumers[2].running.terminate();
    let restored_topic = foldline_testkit::unique("drill-restored");
    foldline_service::kafka::ensure_topic(&brokers, &restored_topic, 3, &[]).await?;
    let (restored, restore_text) = run_cli(
        &new.join("foldline-archiver"),
        &["restore", "--to-topic", &restored_topic],
        &[archive_env, vec![("FOLDLINE_TOPIC", topic.clone())]].concat(),
    );
    let back = foldline_testkit::audit::read_events(
        &brokers,
        &foldline_testkit::registry_url(),
        &restored_topic,
    )
    .await;
    let ids = |events: &[foldline_testkit::audit::LoggedEvent]| {
        let mut ids: Vec<_> = events
            .iter()
            .map(|e| (e.partition, e.offset, e.envelope.clone()))
            .collect();
        ids.sort_by_key(|(p, o, _)| (*p, *o));
        ids.into_iter().map(|(_, _, e)| e).collect::<Vec<_>>()
    };
    let restore_equal = restored && ids(&back) == ids(&events);
    for (ok, what, text) in [
        (verify_passed, "verify", &verify_text),
        (wrong_verified, "verify (wrong order)", &wrong_text),
        (rebuild_equal, "rebuild", &rebuild_text),
        (restore_equal, "restore", &restore_text),
    ] {
        if !ok {
            eprintln!("{what} failed:\n{text}");
        }
    }

    let wrong_order = WrongOrder {
        parked_products: parked_products.len(),
        parked_events: newer,
        retried_products: retried,
        still_parked,
        verify_passed: wrong_verified,
    };
    let met = audit.lost == 0
        && audit.doubled == 0
        && audit.broken_versions == 0
        && consumers_stopped == 0
        && verify_passed
        && rebuild_equal
        && restore_equal
        && wrong_order.parked_products > 0
        && wrong_order.still_parked == 0
        && wrong_order.verify_passed
        && longest_gap <= 2000.0
        // `partitions` mode: a producer's replacement is no outage — no attempt refused by a
        // producer of the current release.
        && steps
            .iter()
            .filter(|s| s.name.contains("producer"))
            .all(|s| s.unavailable_answers == s.unavailable_from_previous_release);
    let result = DrillResult {
        provenance: Provenance::now(),
        old_commit: args.old_commit,
        steps,
        writes_acknowledged: report.acks.len(),
        retries: report.retries,
        refused: report.refused,
        longest_write_gap_ms: (longest_gap * 10.0).round() / 10.0,
        events_in_log: events.len(),
        lost: audit.lost,
        doubled: audit.doubled,
        broken_versions: audit.broken_versions,
        consumers_stopped,
        wrong_order,
        verify_passed,
        rebuild_equal,
        restored_events: back.len(),
        restore_equal,
        met,
    };
    crate::record::write(&args.out, &result)?;
    anyhow::ensure!(
        met,
        "the drill's targets are not met (see {})",
        args.out.display()
    );
    Ok(())
}
