//! `sse-clients`: N concurrent SSE clients on the notifier while writes go through the
//! producer at a fixed rate; deliveries/s, latency from each event's `occurred_at` (set just
//! before its commit, so an upper bound on commit → receipt) to receipt, and the notifier's
//! memory per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    notifier_url: String,
    #[arg(long)]
    producer_url: String,
    /// The notifier's pid, to read its resident memory.
    #[arg(long)]
    notifier_pid: u32,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Writes per second through the producer while measuring.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Bearer token for the producer (`foldline token mint`).
    #[arg(long, env = "FOLDLINE_TOKEN", hide_env_values = true)]
    token: String,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let http = crate::with_token(
        reqwest::Client::builder().pool_max_idle_per_host(0),
        &args.token,
    )?;
    let rss_before = rss_kib(args.notifier_pid);
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let deliveries = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..args.clients {
        let (http, url) = (http.clone(), format!("{}/events/stream", args.notifier_url));
        let (latencies, deliveries, connected, measuring) = (
            latencies.clone(),
            deliveries.clone(),
            connected.clone(),
            measuring.clone(),
        );
        tokio::spawn(async move {
            let Ok(response) = http.get(url).send().await else {
                return;
            };
            connected.fetch_add(1, Ordering::Relaxed);
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                for event in drain_events(&mut buffer) {
                    if let Some(at) = event["occurred_at"].as_i64() {
                        if measuring.load(Ordering::Relaxed) {
                            let lag = (chrono::Utc::now().timestamp_millis() - at).max(0) as u64;
                            let _ = latencies.lock().expect("not poisoned").record(lag);
                            deliveries.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (connected.load(Ordering::Relaxed) as usize) < args.clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connected_now = connected.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(args.notifier_pid);

    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    let mut written = 0u64;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        ticker.tick().await;
        let (http, url) = (http.clone(), format!("{}/products", args.producer_url));
        tokio::spawn(async move {
            let _ = http
                .post(url)
                .json(&serde_json::json!({"name": "sse", "price_cents": 1, "stock": 9, "seller_id": "bench"}))
                .send()
                .await;
        });
        written += 1;
    }
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seconds = started.elapsed().as_secs_f64();
    let latencies = latencies.lock().expect("not poisoned");
    println!(
        "{}",
        serde_json::json!({
            "clients": connected_now,
            "writes": written,
            "write_rate": written as f64 / args.seconds as f64,
            "deliveries": deliveries.load(Ordering::Relaxed),
            "deliveries_per_s": deliveries.load(Ordering::Relaxed) as f64 / seconds,
            "expected_deliveries": written * connected_now,
            "p50_ms": latencies.value_at_quantile(0.5),
            "p99_ms": latencies.value_at_quantile(0.99),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_per_client_kib": (rss_after.saturating_sub(rss_before)) as f64 / connected_now.max(1) as f64,
        })
    );
    Ok(())
}

/// The JSON `data:` of every complete SSE frame in `buffer`, which keeps the incomplete rest
/// (comments, heartbeats and frames without JSON data are skipped).
pub fn drain_events(buffer: &mut String) -> Vec<serde_json::Value> {
    drain_frames(buffer)
        .into_iter()
        .map(|(_, event)| event)
        .collect()
}

/// Like [`drain_events`], with each frame's `id:` (the cursor a client sends back as
/// `Last-Event-ID` when it reconnects).
pub fn drain_frames(buffer: &mut String) -> Vec<(Option<String>, serde_json::Value)> {
    let mut events = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let frame: String = buffer.drain(..end + 2).collect();
        let field = |name: &str| frame.lines().find_map(|l| l.strip_prefix(name));
        let id = field("id:").map(|id| id.trim().to_owned());
        if let Some(Ok(event)) = field("data:").map(|d| serde_json::from_str(d.trim())) {
            events.push((id, event));
        }
    }
    events
}
