//! `sse-run`: one measured run of SSE fan-out against a server — the notifier (writes
//! through the producer) or the bare broadcast floor (`sse-floor`, writes to itself). The
//! clients are a process of their own (`sse-listen`, started here), so the server's CPU, the
//! clients' CPU and the write path are each counted apart. Prints one JSON line: deliveries,
//! deliveries/s, latency from each event's `occurred_at` (set just before its commit on the
//! notifier's path, at broadcast on the floor's) to receipt, events still missing after the
//! grace period, cut-offs, CPU per delivery and memory per connection.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[derive(clap::Args)]
pub struct Args {
    /// What the run is called in the output (`notifier`, `floor`).
    #[arg(long)]
    label: String,
    /// The stream the clients open.
    #[arg(long)]
    stream_url: String,
    /// Where each write is POSTed (the producer's or the floor's `/products`).
    #[arg(long)]
    write_url: String,
    /// The server's pid: its CPU and resident memory.
    #[arg(long)]
    server_pid: u32,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Writes per second while measuring.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds after the last write for every client to have every event.
    #[arg(long, default_value_t = 30)]
    grace: u64,
    /// Bearer token for the writes and the streams (`foldline token mint`).
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

/// CPU time (user + system) of `pid` so far, in microseconds.
pub fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // The kernel's USER_HZ is 100 on Linux.
    ticks * 10_000
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let http = crate::with_token(reqwest::Client::builder(), &args.token)?;
    let mut listener = tokio::process::Command::new(std::env::current_exe()?)
        .args(["sse-listen", "--url", &args.stream_url])
        .args(["--clients", &args.clients.to_string()])
        .args(["--grace", &args.grace.to_string()])
        .env("FOLDLINE_TOKEN", &args.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let listener_pid = listener.id().unwrap_or(0);
    let mut said = tokio::io::BufReader::new(listener.stdout.take().expect("piped")).lines();
    let mut tell = listener.stdin.take().expect("piped");
    let rss_before = rss_kib(args.server_pid);
    let connected: usize = said
        .next_line()
        .await?
        .and_then(|l| l.strip_prefix("connected ").and_then(|n| n.parse().ok()))
        .ok_or_else(|| anyhow::anyhow!("the clients did not say how many connected"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(args.server_pid);

    let (server_cpu, clients_cpu) = (cpu_us(args.server_pid), cpu_us(listener_pid));
    let started_ms = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    let mut writes = Vec::new();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        ticker.tick().await;
        let (http, url, acked) = (http.clone(), args.write_url.clone(), acked.clone());
        writes.push(tokio::spawn(async move {
            let sent = http
                .post(url)
                .timeout(Duration::from_secs(10))
                .json(&serde_json::json!({"name": "sse", "price_cents": 1, "stock": 9, "seller_id": "bench"}))
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let written = writes.len() as u64;
    for write in writes {
        let _ = write.await;
    }
    let acked = acked.load(Ordering::Relaxed);
    tell.write_all(format!("expect {acked}\n").as_bytes())
        .await?;
    tell.flush().await?;
    let result: serde_json::Value = match said.next_line().await? {
        Some(line) => serde_json::from_str(&line)?,
        None => anyhow::bail!("the clients ended without a result"),
    };
    let (server_cpu, clients_cpu) = (
        cpu_us(args.server_pid) - server_cpu,
        cpu_us(listener_pid).saturating_sub(clients_cpu),
    );
    let _ = listener.wait().await;
    let received = result["received"].as_u64().unwrap_or(0);
    let last_ms = result["last_ms"].as_i64().unwrap_or(started_ms);
    let span_s = ((last_ms - started_ms) as f64 / 1000.0).max(args.seconds as f64);
    println!(
        "{}",
        serde_json::json!({
            "label": args.label,
            "clients": connected,
            "writes": written,
            "acked": acked,
            "write_rate": written as f64 / args.seconds as f64,
            "expected_deliveries": acked * connected as u64,
            "delivered": received,
            "missing": result["missing"],
            "extra": result["extra"],
            "cut_off": result["cut_off"],
            "ended": result["ended"],
            "streams_complete": result["streams_complete"],
            "deliveries_per_s": received as f64 / span_s,
            "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"],
            "max_ms": result["max_ms"],
            "bytes_per_event": result["bytes_per_event"],
            "server_cpu_us_per_delivery": server_cpu as f64 / received.max(1) as f64,
            "clients_cpu_us_per_delivery": clients_cpu as f64 / received.max(1) as f64,
            "server_cpu_share": server_cpu as f64 / 1e6 / span_s,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "rss_per_client_kib": (rss_after.saturating_sub(rss_before)) as f64 / connected.max(1) as f64,
        })
    );
    Ok(())
}

/// The `id:` (the cursor a client sends back as `Last-Event-ID` when it reconnects) and the
/// JSON `data:` of every complete SSE frame in `buffer`, which keeps the incomplete rest
/// (comments, heartbeats and frames without JSON data are skipped).
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
