//! Baselines and probes for `scripts/bench project`.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sqlx::{Connection, PgConnection};

#[derive(clap::Args)]
pub struct ConsumeArgs {
    #[arg(long, env = "FOLDLINE_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Also decode every record (Confluent wire format, schema from this registry): the
    /// floor of a consumer's CPU per event.
    #[arg(long)]
    decode_with: Option<String>,
}

/// Reads the topic to its end (read_committed), without decoding or with `--decode-with`: the
/// broker's and client's read limit, and its CPU per record.
pub async fn raw_consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let codec = match &args.decode_with {
        Some(registry) => Some(std::sync::Arc::new(
            foldline_schemas::wire::EventCodec::new(registry, &args.topic)?,
        )),
        None => None,
    };
    let (started, cpu) = (Instant::now(), crate::own_cpu_us());
    let mut records = 0u64;
    let undecodable = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    foldline_service::kafka::read_to_end(
        &args.brokers,
        "foldline-bench-consume",
        &args.topic,
        &foldline_service::position::Offsets::new(),
        |message| {
            records += 1;
            let (codec, undecodable) = (codec.clone(), undecodable.clone());
            async move {
                if let Some(codec) = codec {
                    let payload = rdkafka::Message::payload(&message).unwrap_or_default();
                    if codec.decode(payload).await.is_err() {
                        undecodable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        },
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_us = crate::own_cpu_us() - cpu;
    crate::probe::print(&crate::probe::Consumed {
        records,
        seconds,
        rate: records as f64 / seconds,
        decoded: codec.is_some(),
        undecodable: undecodable.load(std::sync::atomic::Ordering::Relaxed),
        cpu_us,
        cpu_us_per_record: cpu_us as f64 / records.max(1) as f64,
    })
}

#[derive(clap::Args)]
pub struct CopyArgs {
    #[arg(long, env = "FOLDLINE_DATABASE_URL")]
    database_url: String,
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// The table's shape: `products` (with the model's key and seller index: the floor of the
    /// projector's writes) or `history` (product_events without keys or indexes: the floor of
    /// a bulk load's history).
    #[arg(long, default_value = "products")]
    shape: CopyShape,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CopyShape {
    Products,
    History,
    /// The history with the model's primary key (product_id, version): the floor of the live
    /// projector's history insert.
    HistoryKeyed,
}

#[derive(clap::Args)]
pub struct ArchiveReadArgs {
    #[command(flatten)]
    store: foldline_archive::bucket::BucketConfig,
}

/// Lists the archive and reads every file, fetched and decoded as a rebuild reads them, doing
/// nothing with the records: the floor of a rebuild's reading from the archive.
pub async fn raw_archive_read(args: ArchiveReadArgs) -> anyhow::Result<()> {
    use foldline_archive::bucket::ArchiveBucket;
    use foldline_archive::read::ArchiveReader;
    let reader = ArchiveReader::open(ArchiveBucket::connect(&args.store).await).await?;
    let (started, cpu) = (Instant::now(), crate::own_cpu_us());
    let mut files = reader.stream(&foldline_service::position::Offsets::new());
    let (mut count, mut records) = (0usize, 0u64);
    while let Some(file) = files.recv().await {
        count += 1;
        records += file?.records.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_us = crate::own_cpu_us() - cpu;
    crate::probe::print(&crate::probe::ArchiveRead {
        files: count,
        records,
        seconds,
        rate: records as f64 / seconds,
        cpu_us,
        cpu_us_per_record: cpu_us as f64 / records.max(1) as f64,
    })
}

const HISTORY_TABLE: &str = "CREATE TABLE bench_copy.product_events (product_id text NOT NULL,
    version int8 NOT NULL, event_type text NOT NULL, occurred_at timestamptz NOT NULL,
    partition int4 NOT NULL, \"offset\" int8 NOT NULL, actor text, correlation_id text NOT NULL,
    payload jsonb NOT NULL)";

/// COPYs `rows` product rows into a products table shaped like the read model's (in a scratch
/// schema, dropped after): Postgres's own ingest limit on this machine.
pub async fn raw_copy(args: CopyArgs) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&args.database_url).await?;
    sqlx::query("DROP SCHEMA IF EXISTS bench_copy CASCADE")
        .execute(&mut conn)
        .await?;
    sqlx::query("CREATE SCHEMA bench_copy")
        .execute(&mut conn)
        .await?;
    let (create, statement): (&[&str], &str) = match args.shape {
        CopyShape::Products => (
            &[
                "CREATE TABLE bench_copy.products (id text PRIMARY KEY, name text, price_cents bigint, stock bigint,
                 seller_id text, version bigint NOT NULL, updated_at timestamptz NOT NULL, deleted boolean NOT NULL DEFAULT false)",
                "CREATE INDEX ON bench_copy.products (seller_id, id) WHERE NOT deleted",
            ],
            "COPY bench_copy.products (id, name, price_cents, stock, seller_id, version, updated_at, deleted) FROM STDIN",
        ),
        CopyShape::History | CopyShape::HistoryKeyed => (
            match args.shape {
                CopyShape::HistoryKeyed => &[HISTORY_TABLE, "ALTER TABLE bench_copy.product_events ADD PRIMARY KEY (product_id, version)"],
                _ => &[HISTORY_TABLE],
            },
            "COPY bench_copy.product_events FROM STDIN",
        ),
    };
    for sql in create {
        sqlx::query(sql).execute(&mut conn).await?;
    }
    let (started, cpu) = (Instant::now(), crate::own_cpu_us());
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut chunk = String::with_capacity(1 << 20);
    for i in 0..args.rows {
        match args.shape {
            CopyShape::Products => chunk.push_str(&format!(
                "bench-{i:010}\tBench item {i}\t{}\t{}\tseller-{}\t{}\t2026-11-21 12:00:00+00\tf\n",
                100 + i % 9000,
                i % 100,
                i % 500,
                1 + i % 20
            )),
            // As the bench's own events are: a stock adjustment's payload, a correlation id.
            CopyShape::History | CopyShape::HistoryKeyed => chunk.push_str(&format!(
                "bench-{:010}\t{}\tStockAdjusted\t2026-11-21 12:00:00+00\t{}\t{i}\t\\N\t\
                 1b4e28ba-2fa1-11d2-883f-0016d3cca427\t\
                 {{\"delta\": -1, \"reason\": null, \"new_stock\": {}, \"previous_stock\": {}}}\n",
                i % 50_000,
                1 + i / 50_000,
                i % 3,
                i % 100,
                i % 100 + 1
            )),
        }
        if chunk.len() > (1 << 20) - 300 {
            copy.send(chunk.as_bytes()).await?;
            chunk.clear();
        }
    }
    copy.send(chunk.as_bytes()).await?;
    copy.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_us = crate::own_cpu_us() - cpu;
    sqlx::query("DROP SCHEMA bench_copy CASCADE")
        .execute(&mut conn)
        .await?;
    crate::probe::print(&crate::probe::Copied {
        rows: args.rows,
        seconds,
        rate: args.rows as f64 / seconds,
        cpu_us,
        cpu_us_per_row: cpu_us as f64 / args.rows.max(1) as f64,
    })
}

#[derive(clap::Args)]
pub struct WatchArgs {
    #[arg(long, env = "FOLDLINE_DATABASE_URL")]
    database_url: String,
    #[arg(long)]
    topic: String,
    /// The sum of the partitions' end offsets to wait for.
    #[arg(long)]
    end: i64,
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// Polls the live model's stored offsets: time from the first applied batch to `end`.
pub async fn watch_projection(args: WatchArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut conn = PgConnection::connect(&args.database_url).await?;
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT sum(next_offset)::bigint FROM consumer_offsets WHERE topic = $1), 0)",
        )
        .bind(&args.topic)
        .fetch_one(&mut conn)
        .await
        .unwrap_or(0);
        if first.is_none() && done > 0 {
            first = Some((Instant::now(), done));
        }
        if done >= args.end {
            let (at, base) = first.expect("progress seen");
            let seconds = at.elapsed().as_secs_f64().max(0.001);
            return crate::probe::print(&crate::probe::Projected {
                records: done - base,
                seconds,
                rate: (done - base) as f64 / seconds,
            });
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "projection reached {done} of {} in time",
            args.end
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The live schema may not exist yet right after start.
        let schema: Option<String> =
            sqlx::query_scalar("SELECT schema_name FROM foldline_meta.active_model")
                .fetch_optional(&mut conn)
                .await
                .unwrap_or(None);
        if let Some(schema) = schema {
            sqlx::query(&format!("SET search_path TO {schema}"))
                .execute(&mut conn)
                .await?;
        }
    }
}

#[derive(clap::Args)]
pub struct VisibleArgs {
    #[arg(long)]
    producer_url: String,
    #[arg(long)]
    query_url: String,
    /// Writes per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Bearer token for the producer (`foldline token mint`).
    #[arg(long, env = "FOLDLINE_TOKEN", hide_env_values = true)]
    token: String,
}

/// Writes at a fixed rate and, for each write, measures the time from its 2xx answer until
/// the query API shows it (`?after=` its position).
pub async fn write_to_visible(args: VisibleArgs) -> anyhow::Result<()> {
    let client = crate::with_token(reqwest::Client::builder(), &args.token)?;
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    let mut tasks = Vec::new();
    let stop = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < stop {
        ticker.tick().await;
        let (client, producer, query) = (
            client.clone(),
            args.producer_url.clone(),
            args.query_url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(format!("{producer}/products"))
                .json(&serde_json::json!({"name": "visible", "price_cents": 1, "stock": 9, "seller_id": "bench"}))
                .send()
                .await
                .map_err(|_| "write failed")?;
            if response.status() != 201 {
                return Err("write refused");
            }
            let answer: serde_json::Value = response.json().await.map_err(|_| "write failed")?;
            let acknowledged = Instant::now();
            let (id, position) = (answer["id"].as_str().unwrap_or(""), answer["position"].as_str().unwrap_or(""));
            let response = client
                .get(format!("{query}/products/{id}?after={position}&timeout_ms=10000"))
                .send()
                .await
                .map_err(|_| "read failed")?;
            if response.status() == 200 {
                Ok(acknowledged.elapsed())
            } else {
                Err("not visible in 10 s")
            }
        }));
    }
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut failed: std::collections::BTreeMap<String, u64> = Default::default();
    for task in tasks {
        match task.await? {
            Ok(elapsed) => latencies.record(elapsed.as_micros() as u64)?,
            Err(why) => *failed.entry(why.to_owned()).or_default() += 1,
        }
    }
    crate::probe::print(&crate::probe::Visible {
        writes: latencies.len(),
        failed,
        rate: args.rate,
        p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

#[derive(clap::Args)]
pub struct TailArgs {
    #[arg(long, env = "FOLDLINE_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// A bare read_committed consumer at the tail: how long after their timestamp records reach
/// a client at all (the broker's share of write-to-visible).
pub async fn tail_latency(args: TailArgs) -> anyhow::Result<()> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let consumer: StreamConsumer =
        foldline_service::kafka::assign_consumer_config(&args.brokers, "foldline-bench-tail")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "latest")
            .create()?;
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        list.add_partition_offset(&args.topic, p, rdkafka::Offset::End)?;
    }
    consumer.assign(&list)?;
    let mut latencies = Histogram::<u64>::new(3)?;
    let stop = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    while let Ok(Ok(message)) = tokio::time::timeout_at(stop, consumer.recv()).await {
        if let Some(ts) = message.timestamp().to_millis() {
            let now = chrono::Utc::now().timestamp_millis();
            latencies.record((now - ts).max(0) as u64)?;
        }
    }
    crate::probe::print(&crate::probe::Tail {
        records: latencies.len(),
        p50_ms: latencies.value_at_quantile(0.5),
        p99_ms: latencies.value_at_quantile(0.99),
    })
}
