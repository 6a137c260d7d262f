//! `sse-listen`: the SSE bench's clients, in a process of their own so that their CPU is
//! reported apart from the server's. N streams that only look at what the figures need in each
//! frame — its `id:` (sent back as `Last-Event-ID` after a cut-off) and the `occurred_at` of
//! its data (for latency) — with no JSON parsing and no allocation per frame.
//!
//! Protocol with `sse-run`: prints `connected N` once the streams are open, then reads
//! `expect W` from stdin (W events were acknowledged), waits until every stream has had W
//! events or `--grace` seconds passed, and prints one JSON line of counts and latency.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::AsyncBufReadExt;

#[derive(clap::Args)]
pub struct Args {
    /// The stream to open N times (`/events/stream` of the notifier or of the floor).
    #[arg(long)]
    url: String,
    #[arg(long)]
    clients: usize,
    /// Seconds to wait, after `expect`, for every stream to have every event.
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

/// Latency is counted in 1 ms buckets up to this (the rest in the last one).
const MAX_MS: usize = 120_000;

struct Tally {
    /// Events received per stream.
    counts: Vec<AtomicU64>,
    latency_ms: Vec<AtomicU64>,
    bytes: AtomicU64,
    connected: AtomicUsize,
    /// Streams told to reconnect (`event: reconnect`), and streams that ended otherwise.
    cut_off: AtomicU64,
    ended: AtomicU64,
    /// Wall-clock milliseconds of the last event received.
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
        counts: (0..args.clients).map(|_| AtomicU64::new(0)).collect(),
        latency_ms: (0..=MAX_MS).map(|_| AtomicU64::new(0)).collect(),
        bytes: AtomicU64::new(0),
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
    let expected: u64 = loop {
        let Some(line) = lines.next_line().await? else {
            anyhow::bail!("stdin closed before `expect W`");
        };
        if let Some(w) = line.strip_prefix("expect ") {
            break w.trim().parse()?;
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.grace);
    while tally
        .counts
        .iter()
        .any(|c| c.load(Ordering::Relaxed) < expected)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counts: Vec<u64> = tally
        .counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let received: u64 = counts.iter().sum();
    let missing: u64 = counts.iter().map(|c| expected.saturating_sub(*c)).sum();
    let extra: u64 = counts.iter().map(|c| c.saturating_sub(expected)).sum();
    let latency: Vec<u64> = tally
        .latency_ms
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "connected": tally.connected.load(Ordering::Relaxed),
            "expected_per_stream": expected,
            "received": received,
            "missing": missing,
            "extra": extra,
            "streams_complete": counts.iter().filter(|c| **c >= expected).count(),
            "cut_off": tally.cut_off.load(Ordering::Relaxed),
            "ended": tally.ended.load(Ordering::Relaxed),
            "bytes_per_event": tally.bytes.load(Ordering::Relaxed) as f64 / received.max(1) as f64,
            "last_ms": tally.last_ms.load(Ordering::Relaxed),
            "p50_ms": quantile(&latency, 0.5),
            "p99_ms": quantile(&latency, 0.99),
            "max_ms": quantile(&latency, 1.0),
        })
    );
    // The streams are still open: leave without waiting for them.
    std::process::exit(0);
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

/// One client: opens the stream, counts events, and after a cut-off or an end reconnects
/// from the last id it had (the notifier then sends what it missed).
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
                    Seen::Event { id, occurred_at } => {
                        last_id.clear();
                        last_id.extend_from_slice(id);
                        let now = now_ms();
                        let lag = (now - occurred_at).clamp(0, MAX_MS as i64) as usize;
                        tally.latency_ms[lag].fetch_add(1, Ordering::Relaxed);
                        tally.counts[index].fetch_add(1, Ordering::Relaxed);
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

enum Seen<'a> {
    Nothing,
    Reconnect(&'a [u8]),
    Event { id: &'a [u8], occurred_at: i64 },
}

/// What a frame says, without parsing its JSON: its `id:` line, whether it is the
/// `reconnect` event, and the number after `"occurred_at":`.
fn look_at(frame: &[u8]) -> Seen<'_> {
    let Some(id) = frame.strip_prefix(b"id: ") else {
        return Seen::Nothing;
    };
    let id = &id[..memchr::memchr(b'\n', id).unwrap_or(id.len())];
    if memchr::memmem::find(frame, b"\nevent: reconnect\n").is_some() {
        return Seen::Reconnect(id);
    }
    let Some(at) = memchr::memmem::find(frame, b"\"occurred_at\":") else {
        return Seen::Nothing;
    };
    let digits = &frame[at + 14..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    match std::str::from_utf8(&digits[..end])
        .ok()
        .and_then(|d| d.parse().ok())
    {
        Some(occurred_at) => Seen::Event { id, occurred_at },
        None => Seen::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_gives_its_id_and_time_and_a_reconnect_is_told_apart() {
        let event = b"id: 0:3,1:2\nevent: ProductCreated\ndata: {\"a\":1,\"occurred_at\":1700000000123,\"b\":2}\n\n";
        let Seen::Event { id, occurred_at } = look_at(event) else {
            panic!("an event")
        };
        assert_eq!((id, occurred_at), (&b"0:3,1:2"[..], 1_700_000_000_123));
        let reconnect = b"id: 0:3,1:2\nevent: reconnect\ndata: {\"last_event_id\":\"0:3,1:2\"}\n\n";
        assert!(matches!(look_at(reconnect), Seen::Reconnect(b"0:3,1:2")));
        assert!(matches!(look_at(b": heartbeat\n\n"), Seen::Nothing));
    }

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
}
