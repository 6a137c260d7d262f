//! `foldline-notifier`: the binary — configuration, wiring and metrics. What it serves is
//! the library (`lib.rs`): live updates over Server-Sent Events and the live page.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use foldline_notifier::feed::Feed;
use foldline_notifier::follow;
use foldline_notifier::hub::{Backlog, BacklogHub};
use foldline_notifier::{AppState, PageConfig};
use foldline_schemas::wire::EventCodec;
use foldline_service::ops::Ops;

#[derive(Parser)]
#[command(
    name = "foldline-notifier",
    version,
    about = "Live product events over Server-Sent Events, with a live page"
)]
struct Cli {
    #[command(flatten)]
    log: foldline_service::config::EventLog,
    #[arg(
        long,
        env = "FOLDLINE_NOTIFIER_LISTEN",
        default_value = "127.0.0.1:8083"
    )]
    listen: String,
    /// Events a client may fall behind the live feed before it is told to reconnect.
    #[arg(long, env = "FOLDLINE_SSE_BUFFER", default_value_t = 4096)]
    buffer: usize,
    /// SSE streams served at once; past it `GET /events/stream` answers 503 with
    /// `Retry-After` (EventSource retries by itself).
    #[arg(long, env = "FOLDLINE_SSE_MAX_STREAMS", default_value_t = 10_000)]
    max_streams: usize,
    /// Resuming clients waiting for the shared reader at once, when what they missed is older
    /// than the notifier's memory (`FOLDLINE_SSE_BUFFER` events); past it 503 `Retry-After`.
    #[arg(long, env = "FOLDLINE_SSE_MAX_BACKLOG_CLIENTS", default_value_t = 1000)]
    max_backlog_clients: usize,
    /// Recent events kept for `GET /events/recent` (the live page's history on arrival).
    #[arg(long, env = "FOLDLINE_LIVE_HISTORY", default_value_t = 200)]
    history: usize,
    /// The query API as the live page's browser reaches it (totals, chart, low stock).
    #[arg(
        long,
        env = "FOLDLINE_QUERY_PUBLIC_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    query_url: String,
    /// Stock below this is low (the producer's and projector's setting); the page lists those.
    #[arg(long, env = "LOW_STOCK_THRESHOLD", default_value_t = 5)]
    low_stock_threshold: i64,
    /// Whether the stream needs a token (the page itself stays open).
    #[command(flatten)]
    reads: foldline_service::auth::ReadAccess,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foldline_service::telemetry::init("info,rdkafka::client=off");
    let cli = Cli::parse();
    let readers = cli.reads.authenticator()?;
    let codec = Arc::new(EventCodec::new(&cli.log.registry_url, &cli.log.topic)?);
    let feed = Feed::new(cli.buffer, cli.history);
    tokio::spawn(follow::follow(
        feed.clone(),
        cli.log.brokers.clone(),
        cli.log.topic.clone(),
        codec.clone(),
    ));
    let readiness = {
        let caught_up = feed.caught_up.clone();
        foldline_service::ops::readiness(move || {
            let ready = caught_up.load(Ordering::Acquire);
            async move {
                if ready {
                    Ok(())
                } else {
                    Err("reading the topic up to its end".to_owned())
                }
            }
        })
    };
    let ops = Ops::new("notifier", env!("CARGO_PKG_VERSION"), readiness);
    let clients = prometheus::IntGauge::new("sse_clients", "Connected SSE clients")?;
    ops.registry.register(Box::new(clients.clone()))?;
    let log_ends: foldline_notifier::routes::LogEnds = {
        let (brokers, topic) = (cli.log.brokers.clone(), cli.log.topic.clone());
        Arc::new(move || {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            Box::pin(async move {
                foldline_service::kafka::committed_ends(&brokers, "foldline-notifier-ends", &topic)
                    .await
                    .map_err(|error| error.to_string())
            })
        })
    };
    let backlog = Arc::new(Backlog {
        brokers: cli.log.brokers,
        topic: cli.log.topic,
        codec,
    });
    let hub = BacklogHub::start(backlog, cli.max_backlog_clients);
    let passes = prometheus::IntCounter::new(
        "sse_backlog_passes_total",
        "Reads of the log for resuming clients beyond memory (one reader each, shared by the clients waiting)",
    )?;
    ops.registry.register(Box::new(passes.clone()))?;
    let cut_off = prometheus::IntCounter::new(
        "sse_clients_cut_off_total",
        "Streams cut off because their client fell behind (told to reconnect with its cursor)",
    )?;
    ops.registry.register(Box::new(cut_off.clone()))?;
    ops.registry
        .register(Box::new(foldline_notifier::sse::DELIVERY_DELAY.clone()))?;
    let deliveries = Arc::new(foldline_notifier::sse::Deliveries::default());
    let delivered = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "sse_deliveries_total",
            "Frames sent to clients: the feed's shared frame (clients in step) or one made for the client (resuming)",
        ),
        &["frame"],
    )?;
    ops.registry.register(Box::new(delivered.clone()))?;
    let filter_channels = prometheus::IntGauge::new(
        "sse_filter_channels",
        "Distinct filters among the connected clients (each event is filtered once per filter)",
    )?;
    ops.registry.register(Box::new(filter_channels.clone()))?;
    let state = Arc::new(AppState {
        feed,
        history: cli.history,
        streams: Arc::new(tokio::sync::Semaphore::new(cli.max_streams.max(1))),
        hub: hub.clone(),
        deliveries: deliveries.clone(),
        log_ends,
    });
    {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                clients.set(state.feed.clients() as i64);
                let done = state.hub.passes.load(std::sync::atomic::Ordering::Relaxed);
                passes.inc_by(done.saturating_sub(passes.get()));
                let cut =
                    foldline_notifier::sse::CUT_OFF.load(std::sync::atomic::Ordering::Relaxed);
                cut_off.inc_by(cut.saturating_sub(cut_off.get()));
                for (frame, count) in [
                    ("shared", &state.deliveries.shared),
                    ("own", &state.deliveries.own),
                ] {
                    let counter = delivered.with_label_values(&[frame]);
                    let total = count.load(std::sync::atomic::Ordering::Relaxed);
                    counter.inc_by(total.saturating_sub(counter.get()));
                }
                filter_channels.set(state.feed.filter_channels() as i64);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let page = PageConfig {
        query_url: cli.query_url,
        low_stock_threshold: cli.low_stock_threshold,
    };
    let app = foldline_notifier::app(state, readers, page).merge(ops.routes());
    let app = ops.instrument(app);
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    foldline_service::serve::serve(listener, app, foldline_service::shutdown::signal()).await?;
    Ok(())
}
