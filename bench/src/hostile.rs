//! `scripts/bench hostile`: what a hostile client can hold of each service, and what it costs.
//! Opens idle and half-sent connections to every service and counts how many the services
//! still hold after a second and after their header-read timeout (from the processes' open
//! file descriptors); opens SSE streams until the notifier refuses them, and resuming
//! streams; sends refused commands by the thousand; records each process's RSS before and
//! after. One typed result (`--out`), whose table `foldline-bench docs` generates. A service
//! named `floor:…` is the floor measured in the same run (a bare `axum::serve`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::record::Provenance;

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
    /// Where to write the result (JSON).
    #[arg(long)]
    out: PathBuf,
}

/// What one listener held of the connections opened to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Held {
    pub service: String,
    pub opened: usize,
    pub refused: usize,
    pub held_after_1s: usize,
    /// After the header-read timeout and a second more: the target is 0 (the floor keeps all).
    pub held_after_timeout: usize,
    /// Whether it still answered afterwards.
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Streams {
    pub tried: usize,
    pub served: usize,
    /// Refused past the notifier's stream cap (503).
    pub refused: usize,
    pub open_seconds: f64,
    pub notifier_rss_with_streams_kib: u64,
    pub resumed_served: usize,
    pub resumed_refused: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefusedCommands {
    pub count: usize,
    pub producer_rss_before_kib: u64,
    pub producer_rss_after_kib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    pub service: String,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub fds_after: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostileResult {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub header_timeout_ms: u64,
    pub connections: Vec<Held>,
    pub sse: Streams,
    pub refused_commands: RefusedCommands,
    pub rss: Vec<Memory>,
    /// Every Foldline listener held nothing after its timeout and still answered.
    pub met: bool,
}

/// The floor's name starts with this.
pub const FLOOR_PREFIX: &str = "floor:";

struct Service {
    name: String,
    url: String,
    pid: u32,
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
        .map(|s| crate::cpu::status_kib(s.pid, "VmRSS:"))
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
        report.push(Held {
            service: service.name.clone(),
            opened: args.connections - refused,
            refused,
            held_after_1s: after_1s,
            held_after_timeout: after_timeout,
            healthy,
        });
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
        .map_or(0, |s| crate::cpu::status_kib(s.pid, "VmRSS:"));
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
    let producer_before = producer_pid.map_or(0, |p| crate::cpu::status_kib(p, "VmRSS:"));
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
    let producer_after = producer_pid.map_or(0, |p| crate::cpu::status_kib(p, "VmRSS:"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<Memory> = services
        .iter()
        .zip(&rss_before)
        .map(|(s, before)| Memory {
            service: s.name.clone(),
            rss_before_kib: *before,
            rss_after_kib: crate::cpu::status_kib(s.pid, "VmRSS:"),
            fds_after: fds(s.pid),
        })
        .collect();
    let met = report
        .iter()
        .filter(|held| !held.service.starts_with(FLOOR_PREFIX))
        .all(|held| held.held_after_timeout == 0 && held.healthy);
    let result = HostileResult {
        provenance: Provenance::now(),
        header_timeout_ms: args.header_timeout_ms,
        connections: report,
        sse: Streams {
            tried: args.streams,
            served,
            refused: sse_refused,
            open_seconds,
            notifier_rss_with_streams_kib: notifier_rss_streams,
            resumed_served,
            resumed_refused: resume_refused,
        },
        refused_commands: RefusedCommands {
            count: refused_commands,
            producer_rss_before_kib: producer_before,
            producer_rss_after_kib: producer_after,
        },
        rss,
        met,
    };
    crate::record::write(&args.out, &result)
}
