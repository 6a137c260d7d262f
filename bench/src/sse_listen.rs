//! `sse-listen`: the SSE bench's clients, in a process of their own so that their CPU is
//! reported apart from the server's. N streams that look only at what the figures need in
//! each frame — its `id:` (sent back as `Last-Event-ID` after a cut-off), `occurred_at` (for
//! latency), the write's sequence number and the event's position (for the check by id,
//! [`crate::sse_check`]) — with no JSON parsing and no allocation per frame.
//!
//! Protocol with `foldline-bench sse`: prints `connected N` once the streams are open, then,
//! for each line `round FROM TO UNACKED` on stdin (the writes FROM..TO were made; UNACKED,
//! comma-separated or `-`, were not acknowledged), waits until every stream has every
//! acknowledged write of the round or `--grace` seconds passed, and prints one JSON line, a
//! [`RoundReport`]. Ends when stdin closes.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

use crate::sse_check::{look_at, ClientCheck, Seen};

#[derive(clap::Args)]
pub struct Args {
    /// The stream to open N times (`/events/stream` of the notifier or of the floor).
    #[arg(long)]
    url: String,
    #[arg(long)]
    clients: usize,
    /// Seconds to wait, after a round's writes, for every stream to have every event.
    #[arg(long, default_value_t = 30)]
    grace: u64,
    #[arg(
        long,
        env = "FOLDLINE_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
}

/// What the clients saw of one round of writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundReport {
    pub connected: usize,
    /// Acknowledged writes of the round: the events each stream must have.
    pub expected_per_stream: u64,
    /// Deliveries of those events (first receipts).
    pub received: u64,
    /// Acknowledged events a stream did not have when the grace period ended: gaps.
    pub missing: u64,
    /// Frames of a write a stream had already had, during the round.
    pub duplicates: u64,
    /// Frames whose offset did not grow within their partition, during the round.
    pub out_of_order: u64,
    /// Streams the server cut off (`event: reconnect`) and streams that ended otherwise.
    pub cut_off: u64,
    pub ended: u64,
    pub streams_complete: usize,
    /// Wall-clock ms of the last event received.
    pub last_ms: i64,
    /// From each event's `occurred_at` to its receipt, over the round's frames.
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    pub bytes_per_event: f64,
}

/// Latency is counted in 1 ms buckets up to this (the rest in the last one).
const MAX_MS: usize = 120_000;

struct Tally {
    clients: Vec<Mutex<ClientCheck>>,
    /// Frames per latency bucket since the last round's report.
    latency_ms: Vec<AtomicU64>,
    bytes: AtomicU64,
    frames: AtomicU64,
    connected: AtomicUsize,
    cut_off: AtomicU64,
    ended: AtomicU64,
    last_ms: AtomicI64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let http = if args.token.is_empty() {
        reqwest::Client::builder().build()?
    } else {
        crate::with_token(reqwest::Client::builder(), &args.token)?
    };
    let tally = Arc::new(Tally {
        clients: (0..args.clients)
            .map(|_| Mutex::new(ClientCheck::default()))
            .collect(),
        latency_ms: (0..=MAX_MS).map(|_| AtomicU64::new(0)).collect(),
        bytes: AtomicU64::new(0),
        frames: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        cut_off: AtomicU64::new(0),
        ended: AtomicU64::new(0),
        last_ms: AtomicI64::new(0),
    });
    // Connections open a few hundred at a time, as a crowd arriving would.
    let opening = Arc::new(tokio::sync::Semaphore::new(256));
    for index in 0..args.clients {
        tokio::spawn(stream(
            http.clone(),
            args.url.clone(),
            index,
            tally.clone(),
            opening.clone(),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while tally.connected.load(Ordering::Relaxed) < args.clients
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("connected {}", tally.connected.load(Ordering::Relaxed));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let (mut duplicates, mut out_of_order) = (0, 0);
    while let Some(line) = lines.next_line().await? {
        let Some(round) = line.strip_prefix("round ") else {
            continue;
        };
        let expected = acknowledged(round)?;
        let report =
            wait_for_round(&tally, &expected, args.grace, (duplicates, out_of_order)).await;
        duplicates += report.duplicates;
        out_of_order += report.out_of_order;
        println!("{}", serde_json::to_string(&report)?);
    }
    // The streams are still open: leave without waiting for them.
    std::process::exit(0);
}

/// The acknowledged sequence numbers of `FROM TO UNACKED`.
fn acknowledged(round: &str) -> anyhow::Result<Vec<u64>> {
    let mut parts = round.split_whitespace();
    let mut number = || -> anyhow::Result<u64> {
        Ok(parts
            .next()
            .ok_or_else(|| anyhow::anyhow!("round FROM TO UNACKED"))?
            .parse()?)
    };
    let (from, to) = (number()?, number()?);
    let unacked: Vec<u64> = parts
        .next()
        .unwrap_or("-")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    Ok((from..to).filter(|seq| !unacked.contains(seq)).collect())
}

async fn wait_for_round(
    tally: &Tally,
    expected: &[u64],
    grace: u64,
    (duplicates_before, out_of_order_before): (u64, u64),
) -> RoundReport {
    let want = expected.len() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
    // Only streams still short are counted again: the wait itself costs the clients' CPU.
    let mut have = vec![0; tally.clients.len()];
    loop {
        for (client, count) in tally.clients.iter().zip(have.iter_mut()) {
            if *count < want {
                *count = client.lock().expect("client check").count_of(expected);
            }
        }
        if have.iter().all(|c| *c == want) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (duplicates, out_of_order) = tally.clients.iter().fold((0, 0), |(d, o), c| {
        let c = c.lock().expect("client check");
        (d + c.duplicates, o + c.out_of_order)
    });
    let latency: Vec<u64> = tally
        .latency_ms
        .iter()
        .map(|b| b.swap(0, Ordering::Relaxed))
        .collect();
    let received: u64 = have.iter().sum();
    let frames = tally.frames.swap(0, Ordering::Relaxed);
    RoundReport {
        connected: tally.connected.load(Ordering::Relaxed),
        expected_per_stream: want,
        received,
        missing: have.iter().map(|c| want - c).sum(),
        duplicates: duplicates - duplicates_before,
        out_of_order: out_of_order - out_of_order_before,
        cut_off: tally.cut_off.swap(0, Ordering::Relaxed),
        ended: tally.ended.swap(0, Ordering::Relaxed),
        streams_complete: have.iter().filter(|c| **c == want).count(),
        last_ms: tally.last_ms.load(Ordering::Relaxed),
        p50_ms: quantile(&latency, 0.5),
        p99_ms: quantile(&latency, 0.99),
        max_ms: quantile(&latency, 1.0),
        bytes_per_event: tally.bytes.swap(0, Ordering::Relaxed) as f64 / frames.max(1) as f64,
    }
}

/// The smallest bucket at or below which `q` of the counts lie.
fn quantile(buckets: &[u64], q: f64) -> u64 {
    let total: u64 = buckets.iter().sum();
    let target = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (ms, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= target {
            return ms as u64;
        }
    }
    0
}

/// One client: opens the stream, checks and counts events, and after a cut-off or an end
/// reconnects from the last id it had (the notifier then sends what it missed).
async fn stream(
    http: reqwest::Client,
    url: String,
    index: usize,
    tally: Arc<Tally>,
    opening: Arc<tokio::sync::Semaphore>,
) {
    let mut last_id: Vec<u8> = Vec::new();
    let mut first = true;
    let mut buffer = BytesMut::with_capacity(4096);
    loop {
        let permit = opening.acquire().await.ok();
        let mut request = http.get(&url);
        if !last_id.is_empty() {
            request = request.header("last-event-id", &last_id[..]);
        }
        let response = match request.send().await {
            Ok(response) if response.status().is_success() => response,
            _ => {
                drop(permit);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        drop(permit);
        if first {
            tally.connected.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        buffer.clear();
        let mut body = response.bytes_stream();
        let mut cut = false;
        while let Some(Ok(chunk)) = body.next().await {
            buffer.extend_from_slice(&chunk);
            while let Some(end) = memchr::memmem::find(&buffer, b"\n\n") {
                let frame = buffer.split_to(end + 2);
                match look_at(&frame) {
                    Seen::Nothing => {}
                    Seen::Reconnect(id) => {
                        tally.cut_off.fetch_add(1, Ordering::Relaxed);
                        last_id.clear();
                        last_id.extend_from_slice(id);
                        cut = true;
                    }
                    Seen::Event(event) => {
                        last_id.clear();
                        last_id.extend_from_slice(event.id);
                        let now = now_ms();
                        let lag = (now - event.occurred_at).clamp(0, MAX_MS as i64) as usize;
                        tally.latency_ms[lag].fetch_add(1, Ordering::Relaxed);
                        tally.clients[index]
                            .lock()
                            .expect("client check")
                            .receive(event.seq, event.position);
                        tally.frames.fetch_add(1, Ordering::Relaxed);
                        tally.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
                        tally.last_ms.fetch_max(now, Ordering::Relaxed);
                    }
                }
            }
        }
        if !cut {
            tally.ended.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut buckets = vec![0; 10];
        buckets[2] = 50;
        buckets[7] = 49;
        buckets[9] = 1;
        assert_eq!(quantile(&buckets, 0.5), 2);
        assert_eq!(quantile(&buckets, 0.99), 7);
        assert_eq!(quantile(&buckets, 1.0), 9);
    }

    #[test]
    fn a_round_expects_its_writes_but_the_unacknowledged() {
        assert_eq!(acknowledged("5 10 6,8").unwrap(), vec![5, 7, 9]);
        assert_eq!(acknowledged("5 8 -").unwrap(), vec![5, 6, 7]);
    }
}
