//! The soak's load and its per-minute report: writes at a fixed rate through the producer
//! while one SSE client follows the notifier; for every write, the time from sending it until
//! the query API shows it (`?after=` its position) and until the SSE client receives it. Once
//! a minute it reports those percentiles and every consumer's lag ([`MinuteReport`]; the
//! `soak-load` command prints each as a JSON line).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Clone)]
pub struct Args {
    #[arg(long)]
    pub producer_url: String,
    #[arg(long)]
    pub query_url: String,
    #[arg(long)]
    pub notifier_url: String,
    /// Consumers whose `consumer_lag_records` is reported: `name=http://host:port`, repeated.
    #[arg(long = "consumer")]
    pub consumers: Vec<String>,
    /// Writes per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Bearer token for the producer (`foldline token mint`).
    #[arg(long, env = "FOLDLINE_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// Percentiles of one measure over one minute, in milliseconds (all 0 when `n` is 0).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Quantiles {
    pub n: u64,
    #[serde(default)]
    pub p50_ms: f64,
    #[serde(default)]
    pub p99_ms: f64,
    #[serde(default)]
    pub max_ms: f64,
}

impl Quantiles {
    /// Of the samples `ms` (sorted in place); nearest-rank percentiles.
    pub fn of(ms: &mut [f64]) -> Quantiles {
        if ms.is_empty() {
            return Quantiles::default();
        }
        ms.sort_by(f64::total_cmp);
        let rank = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        let round = |x: f64| (x * 10.0).round() / 10.0;
        Quantiles {
            n: ms.len() as u64,
            p50_ms: round(rank(0.50)),
            p99_ms: round(rank(0.99)),
            max_ms: round(ms[ms.len() - 1]),
        }
    }
}

/// What one minute of the load measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MinuteReport {
    pub minute: usize,
    /// Time from sending a write until its 201.
    pub write: Quantiles,
    /// From sending a write until the query API shows it (`?after=` its position).
    pub query_visible: Quantiles,
    /// From sending a write until the SSE client receives its event.
    pub sse_received: Quantiles,
    pub failed_writes: u64,
    pub not_visible_in_10s: u64,
    /// Each consumer's `consumer_lag_records` summed over partitions (-1: unreadable).
    pub lag_records: BTreeMap<String, i64>,
    /// Each service's own stage histograms over the minute (see `stages`).
    pub stages: serde_json::Value,
}

/// What the whole load saw at its end.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoadEnd {
    /// Writes whose event the SSE client never received.
    pub sse_never_received: usize,
    /// How many times the SSE client connected (1 when it never had to reconnect).
    pub sse_connections: u64,
}

/// What one minute measured.
#[derive(Default)]
struct Minute {
    write: Option<Histogram<u64>>,
    query: Option<Histogram<u64>>,
    sse: Option<Histogram<u64>>,
    failed: u64,
    not_visible: u64,
}

fn record(histogram: &mut Option<Histogram<u64>>, elapsed: Duration) {
    let h = histogram.get_or_insert_with(|| Histogram::new(3).expect("valid"));
    let _ = h.record(elapsed.as_micros() as u64);
}

fn quantiles(histogram: &Option<Histogram<u64>>) -> Quantiles {
    match histogram {
        Some(h) => Quantiles {
            n: h.len(),
            p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: h.max() as f64 / 1000.0,
        },
        None => Quantiles::default(),
    }
}

/// When each write was sent, by the position it was answered with; and when SSE delivered
/// positions nobody had asked about yet (an event may arrive before its write's answer).
#[derive(Default)]
struct SseBook {
    sent: HashMap<String, Instant>,
    arrived: HashMap<String, Instant>,
}

/// `soak-load`: the load, each minute printed as a JSON line as it ends, then the end.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let (_, end) = load(&args, |minute| {
        println!("{}", serde_json::to_string(minute).expect("serializable"))
    })
    .await?;
    println!("{}", serde_json::to_string(&end)?);
    Ok(())
}

/// Writes at `args.rate` for `args.minutes`; `on_minute` sees each minute's report as it ends.
pub async fn load(
    args: &Args,
    mut on_minute: impl FnMut(&MinuteReport),
) -> anyhow::Result<(Vec<MinuteReport>, LoadEnd)> {
    let mut reports = Vec::new();
    let client = crate::with_token(
        reqwest::Client::builder().timeout(Duration::from_secs(30)),
        &args.token,
    )?;
    let minutes: Arc<Mutex<Vec<Minute>>> = Arc::new(Mutex::new(
        (0..args.minutes).map(|_| Minute::default()).collect(),
    ));
    let started = Instant::now();
    let minute_of = move |at: Instant| (at.duration_since(started).as_secs() / 60) as usize;
    let book = Arc::new(Mutex::new(SseBook::default()));
    let connections = Arc::new(AtomicU64::new(0));
    tokio::spawn(follow_sse(
        args.notifier_url.clone(),
        book.clone(),
        minutes.clone(),
        minute_of,
        connections.clone(),
    ));
    // Let the SSE client connect before the first write (the first minute is 2 s shorter).
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The stage budget: each service's own histograms, scraped at every report.
    let mut services: std::collections::BTreeMap<String, String> = args
        .consumers
        .iter()
        .filter_map(|c| c.split_once('='))
        .map(|(name, url)| (name.to_owned(), url.to_owned()))
        .collect();
    services.insert("producer".into(), args.producer_url.clone());
    services.insert("query".into(), args.query_url.clone());
    services.insert("notifier".into(), args.notifier_url.clone());
    let mut scraped = crate::stages::scrape(&client, &services).await;

    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    let mut next_report = 1;
    let stop = started + Duration::from_secs(args.minutes * 60);
    while Instant::now() < stop {
        ticker.tick().await;
        let minute = minute_of(Instant::now()).min(args.minutes as usize - 1);
        if minute >= next_report {
            let now = crate::stages::scrape(&client, &services).await;
            let budget = crate::stages::budget(&scraped, &now);
            scraped = now;
            let minute = report(&minutes, next_report - 1, &args.consumers, &client, budget).await;
            on_minute(&minute);
            reports.push(minute);
            next_report += 1;
        }
        let (client, producer, query) = (
            client.clone(),
            args.producer_url.clone(),
            args.query_url.clone(),
        );
        let (minutes, book) = (minutes.clone(), book.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let answer = async {
                let response = client
                    .post(format!("{producer}/products"))
                    .json(&serde_json::json!({"name": "soak", "price_cents": 100, "stock": 50, "seller_id": "soak"}))
                    .send()
                    .await
                    .ok()?;
                if response.status() != 201 {
                    return None;
                }
                response.json::<serde_json::Value>().await.ok()
            }
            .await;
            let Some(answer) = answer else {
                minutes.lock().expect("not poisoned")[minute].failed += 1;
                return;
            };
            record(
                &mut minutes.lock().expect("not poisoned")[minute].write,
                sent.elapsed(),
            );
            let (id, position) = (
                answer["id"].as_str().unwrap_or_default().to_owned(),
                answer["position"].as_str().unwrap_or_default().to_owned(),
            );
            {
                let mut book = book.lock().expect("not poisoned");
                match book.arrived.remove(&position) {
                    Some(at) => record(
                        &mut minutes.lock().expect("not poisoned")[minute].sse,
                        at.saturating_duration_since(sent),
                    ),
                    None => {
                        book.sent.insert(position.clone(), sent);
                    }
                }
            }
            let visible = client
                .get(format!(
                    "{query}/products/{id}?after={position}&timeout_ms=10000"
                ))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            let mut minutes = minutes.lock().expect("not poisoned");
            if visible {
                record(&mut minutes[minute].query, sent.elapsed());
            } else {
                minutes[minute].not_visible += 1;
            }
        });
    }
    // The last writes' reads may take up to their timeout.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let now = crate::stages::scrape(&client, &services).await;
    let minute = report(
        &minutes,
        args.minutes as usize - 1,
        &args.consumers,
        &client,
        crate::stages::budget(&scraped, &now),
    )
    .await;
    on_minute(&minute);
    reports.push(minute);
    let end = LoadEnd {
        sse_never_received: book.lock().expect("not poisoned").sent.len(),
        sse_connections: connections.load(Ordering::Relaxed),
    };
    Ok((reports, end))
}

async fn report(
    minutes: &Mutex<Vec<Minute>>,
    index: usize,
    consumers: &[String],
    client: &reqwest::Client,
    stages: serde_json::Value,
) -> MinuteReport {
    let mut lag_records = BTreeMap::new();
    for consumer in consumers {
        let Some((name, url)) = consumer.split_once('=') else {
            continue;
        };
        lag_records.insert(name.to_owned(), consumer_lag(client, url).await);
    }
    let minutes = minutes.lock().expect("not poisoned");
    let m = &minutes[index];
    MinuteReport {
        minute: index + 1,
        write: quantiles(&m.write),
        query_visible: quantiles(&m.query),
        sse_received: quantiles(&m.sse),
        failed_writes: m.failed,
        not_visible_in_10s: m.not_visible,
        lag_records,
        stages,
    }
}

/// Sum of `consumer_lag_records` over the partitions; -1 when unreadable: no answer, an error
/// status, or no lag series at all (a dead consumer must not read as "no lag" — once another
/// server held a consumer's port and its lag printed as 0).
async fn consumer_lag(client: &reqwest::Client, url: &str) -> i64 {
    let Ok(response) = client.get(format!("{url}/metrics")).send().await else {
        return -1;
    };
    if !response.status().is_success() {
        return -1;
    }
    let text = response.text().await.unwrap_or_default();
    let partitions: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("consumer_lag_records{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    if partitions.is_empty() {
        return -1;
    }
    partitions.iter().sum::<f64>() as i64
}

/// One SSE client from the log's end; records when each position arrived. Like a browser's
/// EventSource it reconnects with `Last-Event-ID` (the notifier tells a client that falls more
/// than `FOLDLINE_SSE_BUFFER` events behind to reconnect, and resumes it from its cursor).
async fn follow_sse(
    notifier: String,
    book: Arc<Mutex<SseBook>>,
    minutes: Arc<Mutex<Vec<Minute>>>,
    minute_of: impl Fn(Instant) -> usize,
    connections: Arc<AtomicU64>,
) {
    let http = reqwest::Client::new();
    let mut last_id: Option<String> = None;
    loop {
        let mut request = http.get(format!("{notifier}/events/stream"));
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let Ok(response) = request.send().await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if response.status() != 200 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        connections.fetch_add(1, Ordering::Relaxed);
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            let arrived = Instant::now();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            for (id, event) in crate::sse_check::drain_frames(&mut buffer) {
                if id.is_some() {
                    last_id = id;
                }
                let Some(position) = event["position"].as_str() else {
                    continue;
                };
                let mut book = book.lock().expect("not poisoned");
                match book.sent.remove(position) {
                    Some(sent) => {
                        let mut minutes = minutes.lock().expect("not poisoned");
                        let minute = minute_of(sent).min(minutes.len() - 1);
                        record(&mut minutes[minute].sse, arrived.duration_since(sent));
                    }
                    None => {
                        book.arrived.insert(position.to_owned(), arrived);
                    }
                }
            }
        }
    }
}
