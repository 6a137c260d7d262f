//! `foldline-bench sse` (`scripts/bench sse`): fan-out to its ceiling. For the notifier and,
//! in the same run, for its floor — a bare broadcast server with the same frames
//! (`sse-floor`) — N clients (`sse-listen`, a process of its own) hold streams while the write
//! rate rises step by step, until the server falls behind: a client misses an acknowledged
//! event, gets one twice or out of order, or p99 from `occurred_at` to receipt passes the
//! stated bound. A server's ceiling is the deliveries/s of its last step that kept up. The
//! search is repeated (floor and notifier in turn, so the machine's drift reaches both), and
//! the ceilings are reported as median and spread; then both servers run at half the
//! notifier's median ceiling for its latency there. Writes one typed result; `foldline-bench
//! docs` makes its tables.
//!
//! Runs against the broker and registry of `start_core_stack` (addresses from the
//! environment) and the producer and notifier binaries in `--bins`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldline_testkit::process::{free_port, Spawned};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::Mutex;

use crate::record::Provenance;
use crate::sse_listen::RoundReport;
use crate::sse_result::{
    AtHalf, Search, Server, Spread, SseResult, Step, CEILING_RATIO_GOAL, P99_AT_HALF_GOAL_MS,
};

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the release binaries (the producer and the notifier).
    #[arg(long)]
    bins: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// The write rates (writes/s) stepped through, lowest first, until a server falls behind.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,16,25,32,40,50,63,80,100,125,160,200"
    )]
    rates: Vec<u64>,
    /// Seconds of writes per step.
    #[arg(long, default_value_t = 10)]
    step_seconds: u64,
    /// A step whose p99 (occurred_at → receipt) passes this has fallen behind.
    #[arg(long, default_value_t = 1_000)]
    p99_bound_ms: u64,
    /// Searches per server (median and spread).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seconds after a step's last write for every client to have every event.
    #[arg(long, default_value_t = 20)]
    grace: u64,
    /// Where to write the result (JSON).
    #[arg(long)]
    out: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // The checkout as the run starts: what was built (it may change while the run goes on).
    let provenance = Provenance::now();
    let token = foldline_testkit::auth::token("bench-sse", "admin", None, 24 * 3600);
    let topic = foldline_testkit::unique("sse");
    let bin = |name: &str| args.bins.join(name).to_string_lossy().into_owned();
    let producer = Spawned::start(
        &bin("foldline-producer"),
        "FOLDLINE_PRODUCER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.clone()),
            (
                "FOLDLINE_TRANSACTIONAL_ID",
                foldline_testkit::unique("bench-sse"),
            ),
        ],
    )
    .await;
    // Room for every client and its reconnect while the old stream is still closing.
    let notifier = Spawned::start(
        &bin("foldline-notifier"),
        "FOLDLINE_NOTIFIER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic),
            ("FOLDLINE_SSE_MAX_STREAMS", (args.clients * 2).to_string()),
            (
                "FOLDLINE_MAX_CONNECTIONS",
                (args.clients * 2 + 100).to_string(),
            ),
        ],
    )
    .await;
    let floor_port = free_port();
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let floor_listen = format!("127.0.0.1:{floor_port}");
    let floor = Spawned::spawn(
        &exe,
        &["sse-floor", "--listen", &floor_listen],
        &[],
        floor_port,
    );
    floor.wait_ready(Duration::from_secs(30)).await;
    let targets = [
        Target::new(Server::Floor, &floor, &floor.url)?,
        Target::new(Server::Notifier, &notifier, &producer.url)?,
    ];
    let writer = Writer::new(&token)?;
    let mut searches = Vec::new();
    for repeat in 0..args.repeats {
        for target in &targets {
            let search = search(target, &writer, &token, repeat, &args).await?;
            let ceiling = search.ceiling().map(|s| s.deliveries_per_s);
            eprintln!(
                "{:?}, search {}: ceiling {ceiling:?} deliveries/s",
                target.server,
                repeat + 1
            );
            searches.push(search);
        }
    }
    let ceilings = |server: Server| -> Vec<&Step> {
        searches
            .iter()
            .filter(|s| s.server == server)
            .filter_map(Search::ceiling)
            .collect()
    };
    let spread = |steps: &[&Step]| {
        let every_search_found_one = steps.len() == args.repeats;
        every_search_found_one
            .then(|| Spread::of(&steps.iter().map(|s| s.deliveries_per_s).collect::<Vec<_>>()))
            .flatten()
    };
    let (floor_steps, notifier_steps) = (ceilings(Server::Floor), ceilings(Server::Notifier));
    let floor_ceiling = spread(&floor_steps);
    let notifier_ceiling = spread(&notifier_steps);
    let ceiling_ratio = floor_ceiling
        .as_ref()
        .zip(notifier_ceiling.as_ref())
        .map(|(f, n)| n.median / f.median);
    let notifier_rates: Vec<f64> = notifier_steps.iter().map(|s| s.write_rate as f64).collect();
    let half_rate = Spread::of(&notifier_rates).map_or(0, |s| (s.median / 2.0).round() as u64);
    let mut at_half = Vec::new();
    if half_rate > 0 {
        for target in &targets {
            at_half.push(run_at_half(target, &writer, &token, half_rate, &args).await?);
        }
    }
    let p99_at_half = |server: Server| {
        at_half
            .iter()
            .find(|h| h.server == server)
            .and_then(|h| Spread::of(&h.steps.iter().map(|s| s.p99_ms as f64).collect::<Vec<_>>()))
    };
    let every_step = || {
        searches
            .iter()
            .map(|s| (s.server, &s.steps))
            .chain(at_half.iter().map(|h| (h.server, &h.steps)))
            .flat_map(|(server, steps)| steps.iter().map(move |s| (server, s)))
    };
    let notifier_missing = every_step()
        .filter(|(server, _)| *server == Server::Notifier)
        .map(|(_, s)| s.missing)
        .sum();
    let duplicates = every_step().map(|(_, s)| s.duplicates).sum();
    let out_of_order = every_step().map(|(_, s)| s.out_of_order).sum();
    let notifier_p99_at_half_ms = p99_at_half(Server::Notifier);
    let met = ceiling_ratio.is_some_and(|r| r >= CEILING_RATIO_GOAL)
        && notifier_p99_at_half_ms
            .as_ref()
            .is_some_and(|p| p.median <= P99_AT_HALF_GOAL_MS as f64)
        && notifier_missing == 0
        && duplicates == 0
        && out_of_order == 0;
    let result = SseResult {
        provenance,
        clients: args.clients,
        step_seconds: args.step_seconds,
        p99_bound_ms: args.p99_bound_ms,
        searches,
        floor_ceiling,
        notifier_ceiling,
        ceiling_ratio,
        half_rate,
        floor_p99_at_half_ms: p99_at_half(Server::Floor),
        notifier_p99_at_half_ms,
        at_half,
        notifier_missing,
        duplicates,
        out_of_order,
        met,
    };
    drop((producer, notifier, floor));
    crate::record::write(&args.out, &result)
}

/// A server under test: where its clients read and where its writes go.
struct Target {
    server: Server,
    stream_url: String,
    write_url: String,
    pid: u32,
}

impl Target {
    fn new(server: Server, process: &Spawned, writes_to: &str) -> anyhow::Result<Target> {
        Ok(Target {
            server,
            stream_url: format!("{}/events/stream", process.url),
            write_url: format!("{writes_to}/products"),
            pid: process
                .pid()
                .ok_or_else(|| anyhow::anyhow!("{} is not running", process.name))?,
        })
    }
}

/// One search: clients connect, then steps at each rate until one falls behind.
async fn search(
    target: &Target,
    writer: &Writer,
    token: &str,
    repeat: usize,
    args: &Args,
) -> anyhow::Result<Search> {
    let rss_before = crate::cpu::status_kib(target.pid, "VmRSS:");
    let mut clients = Clients::open(&target.stream_url, args.clients, args.grace, token).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_per_client_kib = crate::cpu::status_kib(target.pid, "VmRSS:").saturating_sub(rss_before)
        as f64
        / clients.connected.max(1) as f64;
    let mut steps = Vec::new();
    for rate in &args.rates {
        let step = step(target, &mut clients, writer, *rate, args).await?;
        let kept_up = step.kept_up;
        steps.push(step);
        if !kept_up {
            break;
        }
    }
    Ok(Search {
        server: target.server,
        repeat,
        connected: clients.connected,
        rss_per_client_kib,
        steps,
    })
}

async fn run_at_half(
    target: &Target,
    writer: &Writer,
    token: &str,
    rate: u64,
    args: &Args,
) -> anyhow::Result<AtHalf> {
    let mut clients = Clients::open(&target.stream_url, args.clients, args.grace, token).await?;
    let mut steps = Vec::new();
    for _ in 0..args.repeats {
        steps.push(step(target, &mut clients, writer, rate, args).await?);
    }
    Ok(AtHalf {
        server: target.server,
        steps,
    })
}

/// Writes at `rate` for the step's seconds, then asks the clients what they saw.
async fn step(
    target: &Target,
    clients: &mut Clients,
    writer: &Writer,
    rate: u64,
    args: &Args,
) -> anyhow::Result<Step> {
    let (server_cpu, clients_cpu) = (
        crate::cpu::cpu_us(target.pid),
        crate::cpu::cpu_us(clients.pid),
    );
    let started_ms = chrono::Utc::now().timestamp_millis();
    let written = writer
        .write(
            &target.write_url,
            rate,
            Duration::from_secs(args.step_seconds),
        )
        .await;
    let report = clients.round(&written).await?;
    let (server_cpu, clients_cpu) = (
        crate::cpu::cpu_us(target.pid).saturating_sub(server_cpu),
        crate::cpu::cpu_us(clients.pid).saturating_sub(clients_cpu),
    );
    let span_s = ((report.last_ms - started_ms) as f64 / 1000.0).max(args.step_seconds as f64);
    let deliveries = report.received.max(1) as f64;
    let kept_up = report.missing == 0
        && report.duplicates == 0
        && report.out_of_order == 0
        && report.p99_ms <= args.p99_bound_ms
        && report.connected == clients.connected;
    eprintln!(
        "{:?} at {rate} writes/s: p99 {} ms, {} missing, kept up: {kept_up}",
        target.server, report.p99_ms, report.missing
    );
    Ok(Step {
        write_rate: rate,
        acknowledged: report.expected_per_stream,
        deliveries_per_s: (report.received as f64 / span_s).round(),
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
        missing: report.missing,
        duplicates: report.duplicates,
        out_of_order: report.out_of_order,
        cut_off: report.cut_off,
        server_cpu_us_per_delivery: round2(server_cpu as f64 / deliveries),
        clients_cpu_us_per_delivery: round2(clients_cpu as f64 / deliveries),
        kept_up,
    })
}

/// The writes of a step: sequence numbers FROM..TO, and those not acknowledged.
struct Written {
    from: u64,
    to: u64,
    unacknowledged: Vec<u64>,
}

/// Makes every write of the run, each with a sequence number of its own (its product's name
/// is `sse-<seq>`), so a client can tell each event apart by it.
struct Writer {
    http: reqwest::Client,
    next: std::sync::atomic::AtomicU64,
}

impl Writer {
    fn new(token: &str) -> anyhow::Result<Writer> {
        Ok(Writer {
            http: crate::with_token(reqwest::Client::builder(), token)?,
            next: 0.into(),
        })
    }

    async fn write(&self, url: &str, rate: u64, seconds: Duration) -> Written {
        use std::sync::atomic::Ordering;
        let from = self.next.load(Ordering::Relaxed);
        let unacknowledged = Arc::new(Mutex::new(Vec::new()));
        let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        let started = Instant::now();
        let mut writes = Vec::new();
        while started.elapsed() < seconds {
            ticker.tick().await;
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            let (http, url, unacknowledged) =
                (self.http.clone(), url.to_owned(), unacknowledged.clone());
            writes.push(tokio::spawn(async move {
                let body = serde_json::json!({
                    "name": format!("sse-{seq}"), "price_cents": 1, "stock": 9, "seller_id": "bench"
                });
                let sent = http
                    .post(url)
                    .timeout(Duration::from_secs(10))
                    .json(&body)
                    .send()
                    .await;
                if !sent.is_ok_and(|r| r.status().is_success()) {
                    unacknowledged.lock().await.push(seq);
                }
            }));
        }
        for write in writes {
            let _ = write.await;
        }
        let to = self.next.load(Ordering::Relaxed);
        let unacknowledged = std::mem::take(&mut *unacknowledged.lock().await);
        Written {
            from,
            to,
            unacknowledged,
        }
    }
}

/// The clients' process (`sse-listen`) with its streams open.
struct Clients {
    _child: Child,
    pid: u32,
    connected: usize,
    said: Lines<BufReader<ChildStdout>>,
    tell: ChildStdin,
}

impl Clients {
    async fn open(url: &str, clients: usize, grace: u64, token: &str) -> anyhow::Result<Clients> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["sse-listen", "--url", url])
            .args(["--clients", &clients.to_string()])
            .args(["--grace", &grace.to_string()])
            .env("FOLDLINE_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let mut said = BufReader::new(child.stdout.take().expect("piped")).lines();
        let tell = child.stdin.take().expect("piped");
        let connected: usize = said
            .next_line()
            .await?
            .and_then(|l| l.strip_prefix("connected ").and_then(|n| n.parse().ok()))
            .ok_or_else(|| anyhow::anyhow!("the clients did not say how many connected"))?;
        anyhow::ensure!(
            connected == clients,
            "{connected} of {clients} clients connected to {url}"
        );
        Ok(Clients {
            _child: child,
            pid,
            connected,
            said,
            tell,
        })
    }

    async fn round(&mut self, written: &Written) -> anyhow::Result<RoundReport> {
        let unacknowledged = if written.unacknowledged.is_empty() {
            "-".to_owned()
        } else {
            let seqs: Vec<String> = written.unacknowledged.iter().map(u64::to_string).collect();
            seqs.join(",")
        };
        let line = format!("round {} {} {unacknowledged}\n", written.from, written.to);
        self.tell.write_all(line.as_bytes()).await?;
        self.tell.flush().await?;
        match self.said.next_line().await? {
            Some(line) => Ok(serde_json::from_str(&line)?),
            None => anyhow::bail!("the clients ended without a report"),
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
