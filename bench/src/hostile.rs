//! `scripts/bench hostile`: what a hostile client can hold of each service, and what it costs.
//! Opens idle and half-sent connections to every service and counts how many the services
//! still hold after a second and after their header-read timeout (from the processes' open
//! file descriptors); opens SSE streams until the notifier refuses them, and resuming
//! streams; sends refused commands by the thousand; prints each process's RSS before and
//! after, as one JSON object.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(clap::Args)]
pub struct Args {
    /// `name=url=pid` per service.
    #[arg(long = "service", required = true)]
    services: Vec<String>,
    /// The notifier's URL (for the SSE part).
    #[arg(long)]
    notifier_url: String,
    /// The producer's URL (for the refused commands).
    #[arg(long)]
    producer_url: String,
    /// Connections opened to each service (half send half a request head, half nothing).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// SSE streams tried (past the notifier's cap they are refused).
    #[arg(long, default_value_t = 2000)]
    streams: usize,
    /// The services' header-read timeout, to wait it out.
    #[arg(long, default_value_t = 2000)]
    header_timeout_ms: u64,
    /// A seller token (`seller_id` s) for the refused creates.
    #[arg(long, env = "FOLDLINE_SELLER_TOKEN")]
    seller_token: String,
}

struct Service {
    name: String,
    url: String,
    pid: u32,
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let services: Vec<Service> = args
        .services
        .iter()
        .map(|s| {
            let mut parts = s.splitn(3, '=');
            let (name, url, pid) = (parts.next(), parts.next(), parts.next());
            match (name, url, pid.and_then(|p| p.parse().ok())) {
                (Some(name), Some(url), Some(pid)) => Ok(Service {
                    name: name.to_owned(),
                    url: url.to_owned(),
                    pid,
                }),
                _ => Err(anyhow::anyhow!("--service name=url=pid, got {s}")),
            }
        })
        .collect::<anyhow::Result<_>>()?;
    let rss_before: Vec<u64> = services
        .iter()
        .map(|s| status_field(s.pid, "VmRSS:"))
        .collect();
    let mut report = Vec::new();
    for service in &services {
        let base = fds(service.pid);
        let address = service.url.trim_start_matches("http://").to_owned();
        let mut held = Vec::with_capacity(args.connections);
        let mut refused = 0;
        for i in 0..args.connections {
            match TcpStream::connect(&address).await {
                Ok(mut stream) => {
                    if i % 2 == 0 {
                        let _ = stream
                            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
                            .await;
                    }
                    held.push(stream);
                }
                Err(_) => refused += 1,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after_1s = fds(service.pid).saturating_sub(base);
        tokio::time::sleep(Duration::from_millis(args.header_timeout_ms + 1000)).await;
        let after_timeout = fds(service.pid).saturating_sub(base);
        // Still answering (the floor's bare server has no /health: any non-5xx answer counts).
        let healthy = reqwest::get(format!("{}/health", service.url))
            .await
            .is_ok_and(|r| !r.status().is_server_error());
        drop(held);
        report.push(
            json!({"service": service.name, "opened": args.connections - refused,
            "refused": refused, "held_after_1s": after_1s, "held_after_timeout": after_timeout,
            "healthy": healthy}),
        );
    }

    // SSE: fresh streams until refused, then resuming ones from memory.
    let client = reqwest::Client::new();
    let mut streams = Vec::new();
    let mut sse_refused = 0;
    let started = Instant::now();
    for _ in 0..args.streams {
        let response = client
            .get(format!("{}/events/stream", args.notifier_url))
            .send()
            .await?;
        if response.status().is_success() {
            streams.push(response);
        } else {
            sse_refused += 1;
        }
    }
    let served = streams.len();
    let open_seconds = started.elapsed().as_secs_f64();
    let notifier_rss_streams = services
        .iter()
        .find(|s| s.name == "notifier")
        .map_or(0, |s| status_field(s.pid, "VmRSS:"));
    drop(streams);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recent: Value = client
        .get(format!("{}/events/recent?limit=1", args.notifier_url))
        .send()
        .await?
        .json()
        .await?;
    let cursor = recent["cursor"].as_str().unwrap_or_default().to_owned();
    let mut resumed = Vec::new();
    let mut resume_refused = 0;
    for _ in 0..args.streams.min(1000) {
        let response = client
            .get(format!("{}/events/stream", args.notifier_url))
            .header("last-event-id", &cursor)
            .send()
            .await?;
        if response.status().is_success() {
            resumed.push(response);
        } else {
            resume_refused += 1;
        }
    }
    let resumed_served = resumed.len();
    drop(resumed);

    // Refused commands: a seller creating for another seller, 1,000 per batch.
    let producer_pid = services
        .iter()
        .find(|s| s.name == "producer")
        .map(|s| s.pid);
    let producer_before = producer_pid.map_or(0, |p| status_field(p, "VmRSS:"));
    let mut refused_commands = 0;
    for round in 0..20 {
        let commands: Vec<Value> = (0..1000)
            .map(|i| json!({"op": "create", "name": format!("n{round}-{i}"), "price_cents": 1, "stock": 1, "seller_id": "not-mine"}))
            .collect();
        let answer = client
            .post(format!("{}/commands", args.producer_url))
            .bearer_auth(&args.seller_token)
            .json(&json!({ "commands": commands }))
            .send()
            .await?;
        if answer.status().as_u16() == 403 {
            refused_commands += 1000;
        }
    }
    let producer_after = producer_pid.map_or(0, |p| status_field(p, "VmRSS:"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<Value> = services
        .iter()
        .zip(&rss_before)
        .map(|(s, before)| {
            json!({"service": s.name, "rss_before_kib": before,
            "rss_after_kib": status_field(s.pid, "VmRSS:"), "fds_after": fds(s.pid)})
        })
        .collect();
    println!(
        "{}",
        json!({"connections": report, "sse": {"tried": args.streams, "served": served,
            "refused": sse_refused, "open_seconds": open_seconds,
            "notifier_rss_with_streams_kib": notifier_rss_streams,
            "resumed_served": resumed_served, "resumed_refused": resume_refused},
            "refused_commands": {"count": refused_commands, "producer_rss_before_kib": producer_before,
            "producer_rss_after_kib": producer_after}, "rss": rss})
    );
    Ok(())
}
