//! Baselines for `scripts/bench sinks`: the same bytes PUT to S3 in a bare loop (beside the
//! archiver), the same items written with a bare BatchWriteItem loop (beside the recent-events
//! consumer), and a metric watcher that times a consumer from its first event to its last.

use std::time::{Duration, Instant};

use foldline_archive::bucket::{ArchiveBucket, BucketConfig};
use foldline_archive::file::read_file;
use foldline_archive::read::ArchiveReader;
use foldline_consumer_runtime::Record;
use foldline_recent_events::items::items_for;
use foldline_recent_events::items::ITEMS_PER_REQUEST;
use foldline_recent_events::sink::{write_items, WriterMetrics};
use foldline_recent_events::table::ensure_table;
use foldline_schemas::wire::EventCodec;
use rdkafka::Message;

#[derive(clap::Args)]
pub struct PutArgs {
    #[command(flatten)]
    store: BucketConfig,
    /// Where the copies go (beside the archive's `products/`).
    #[arg(long, default_value = "bare-put")]
    to_prefix: String,
}

/// PUTs every archive file again, one after another, with the archiver's own upload code:
/// what S3 takes for these bytes without any consuming, decoding or encoding.
pub async fn raw_put(args: PutArgs) -> anyhow::Result<()> {
    let store = ArchiveBucket::connect(&args.store).await;
    let reader = ArchiveReader::open(store.clone()).await?;
    let mut files = Vec::new();
    let mut records = 0usize;
    for range in reader.files.values().flatten() {
        let bytes = store.get(&range.key(&store.prefix)).await?;
        records += read_file(&bytes)?.len();
        files.push((range.key(&args.to_prefix), bytes::Bytes::from(bytes)));
    }
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let (started, cpu) = (Instant::now(), crate::own_cpu_us());
    for (key, body) in files.iter() {
        store.put(key, body.clone()).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_us = crate::own_cpu_us() - cpu;
    crate::probe::print(&crate::probe::Put {
        files: files.len(),
        bytes,
        records,
        seconds,
        rate: records as f64 / seconds,
        mib_per_s: bytes as f64 / 1048576.0 / seconds,
        cpu_us,
    })
}

#[derive(clap::Args)]
pub struct BatchWriteArgs {
    #[command(flatten)]
    log: foldline_service::config::EventLog,
    #[command(flatten)]
    dynamodb: foldline_recent_events::DynamoDb,
    /// A table of its own (created like the consumer's).
    #[arg(long)]
    table: String,
}

/// Builds the consumer's items for every event of the topic, then writes them with one
/// BatchWriteItem of 25 after another (unprocessed items retried the same way).
pub async fn raw_batch_write(args: BatchWriteArgs) -> anyhow::Result<()> {
    let codec = EventCodec::new(&args.log.registry_url, &args.log.topic)?;
    let mut messages = Vec::new();
    foldline_service::kafka::read_to_end(
        &args.log.brokers,
        "foldline-bench-items",
        &args.log.topic,
        &foldline_service::position::Offsets::new(),
        |m| {
            messages.push(m);
            async {}
        },
    )
    .await?;
    let mut items = Vec::new();
    for m in &messages {
        let event = codec.decode(m.payload().unwrap_or_default()).await?;
        let record = Record {
            partition: m.partition(),
            offset: m.offset(),
            key: None,
            timestamp_ms: None,
            event,
        };
        items.extend(items_for(&record, chrono::Duration::days(30)));
    }
    let client = args.dynamodb.client().await;
    ensure_table(&client, &args.table).await?;
    let metrics = WriterMetrics::new();
    let (started, cpu) = (Instant::now(), crate::own_cpu_us());
    for chunk in items.chunks(ITEMS_PER_REQUEST) {
        write_items(&client, &args.table, chunk.to_vec(), &metrics).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_us = crate::own_cpu_us() - cpu;
    crate::probe::print(&crate::probe::BatchWritten {
        events: messages.len(),
        items: items.len(),
        seconds,
        rate: messages.len() as f64 / seconds,
        cpu_us,
    })
}

#[derive(clap::Args)]
pub struct WatchArgs {
    /// The consumer's /metrics URL.
    #[arg(long)]
    url: String,
    /// Counter to watch.
    #[arg(long)]
    metric: String,
    /// Stop when it reaches this.
    #[arg(long)]
    target: f64,
    /// Counted per event (the rate is printed per event).
    #[arg(long, default_value_t = 1.0)]
    per_event: f64,
    /// Give up (exit 1) after this many seconds.
    #[arg(long, default_value_t = 1800)]
    limit_secs: u64,
}

/// Times a consumer from the first time `metric` moves to when it reaches `target`.
pub async fn watch_metric(args: WatchArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let read = || async {
        let text = client.get(&args.url).send().await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{} ", args.metric)))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(args.limit_secs);
    let mut first: Option<(Instant, f64)> = None;
    loop {
        let value = read().await.unwrap_or(0.0);
        let now = Instant::now();
        if first.is_none() && value > 0.0 {
            first = Some((now, value));
        }
        if value >= args.target {
            let (since, at_start) = first.unwrap_or((now, 0.0));
            let seconds = now.duration_since(since).as_secs_f64().max(0.001);
            let events = (value - at_start) / args.per_event;
            return crate::probe::print(&crate::probe::Watched {
                value,
                seconds,
                rate: events / seconds,
            });
        }
        anyhow::ensure!(now < deadline, "{} stayed at {value}", args.metric);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
