use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "FOLDLINE_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// How many records to send.
    #[arg(long, default_value_t = 50_000)]
    records: usize,
    /// Size of each value in bytes (the producer's encoded events are about this size).
    #[arg(long, default_value_t = 200)]
    value_bytes: usize,
    /// Records waiting for their acknowledgement at once.
    #[arg(long, default_value_t = 10_000)]
    in_flight: usize,
    /// Send in Kafka transactions of this many records, one after the other (0: no
    /// transactions). Shows what one commit costs on this broker.
    #[arg(long, default_value_t = 0)]
    transaction_records: usize,
    /// Transactional producers committing side by side (each its own transactional id and
    /// a share of the records): does the broker's commit rate grow with parallel commits?
    #[arg(long, default_value_t = 1)]
    transactional_producers: usize,
    /// librdkafka debug contexts, for looking into a slow broker.
    #[arg(long)]
    debug: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    foldline_service::kafka::ensure_topic(&args.brokers, &args.topic, 3, &[]).await?;
    if args.transaction_records > 0 {
        return run_transactions(&args).await;
    }
    // The producer's durability settings, without its transactions.
    let producer: FutureProducer = config(&args).create()?;
    let value = vec![b'x'; args.value_bytes];
    let keys: Vec<String> = (0..1000)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut pending = FuturesUnordered::new();
    let started = Instant::now();
    let mut failed = 0usize;
    for i in 0..args.records {
        if pending.len() >= args.in_flight {
            record(pending.next().await, &mut latencies, &mut failed);
        }
        let key = &keys[i % keys.len()];
        let delivery = producer.send(
            FutureRecord::to(&args.topic).key(key).payload(&value),
            Duration::from_secs(30),
        );
        let sent = Instant::now();
        pending.push(async move { (delivery.await, sent.elapsed()) });
    }
    while let Some(done) = pending.next().await {
        record(Some(done), &mut latencies, &mut failed);
    }
    let seconds = started.elapsed().as_secs_f64();
    crate::probe::print(&crate::probe::Produced {
        records: args.records,
        failed,
        producers: 0,
        transactions: 0,
        seconds,
        rate: args.records as f64 / seconds,
        p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

type Delivery = (
    Result<
        rdkafka::producer::future_producer::Delivery,
        (rdkafka::error::KafkaError, rdkafka::message::OwnedMessage),
    >,
    Duration,
);

fn record(done: Option<Delivery>, latencies: &mut Histogram<u64>, failed: &mut usize) {
    if let Some((result, elapsed)) = done {
        if result.is_err() {
            *failed += 1;
        }
        let _ = latencies.record(elapsed.as_micros() as u64);
    }
}

fn config(args: &Args) -> rdkafka::ClientConfig {
    let mut config = foldline_service::kafka::producer_config(&args.brokers, "foldline-bench");
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000");
    if let Some(debug) = &args.debug {
        config.set("debug", debug).set("log_level", "7");
    }
    config
}

/// Transactions of `transaction_records` records, one at a time per producer, from
/// `transactional_producers` producers at once: records/s in all and the latency of each whole
/// transaction (begin → commit acknowledged).
async fn run_transactions(args: &Args) -> anyhow::Result<()> {
    let producers = args.transactional_producers.max(1);
    let started = Instant::now();
    let mut runs = Vec::new();
    for n in 0..producers {
        let share = args.records / producers + usize::from(n < args.records % producers);
        runs.push(one_transactional_producer(args, share));
    }
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut sent = 0;
    for run in futures::future::join_all(runs).await {
        let (records, histogram) = run?;
        sent += records;
        latencies.add(histogram)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    crate::probe::print(&crate::probe::Produced {
        records: sent,
        failed: 0,
        producers,
        transactions: latencies.len(),
        seconds,
        rate: sent as f64 / seconds,
        p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// One transactional producer sending `records` in transactions of `transaction_records`.
async fn one_transactional_producer(
    args: &Args,
    records: usize,
) -> anyhow::Result<(usize, Histogram<u64>)> {
    let producer: FutureProducer = config(args)
        .set(
            "transactional.id",
            format!("foldline-bench-{}", uuid::Uuid::new_v4()),
        )
        .create()?;
    let init = producer.clone();
    tokio::task::spawn_blocking(move || init.init_transactions(Duration::from_secs(15))).await??;
    let value = vec![b'x'; args.value_bytes];
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut sent = 0;
    while sent < records {
        let began = Instant::now();
        producer.begin_transaction()?;
        let n = args.transaction_records.min(records - sent);
        let mut deliveries = Vec::with_capacity(n);
        for i in 0..n {
            let key = format!("key-{}", (sent + i) % 1000);
            deliveries.push(
                producer
                    .send_result(FutureRecord::to(&args.topic).key(&key).payload(&value))
                    .map_err(|(e, _)| e)?,
            );
        }
        // Reports first: see `await_reports_released` for why.
        for delivery in deliveries {
            let _ = delivery.await;
        }
        let committing = producer.clone();
        tokio::task::spawn_blocking(move || {
            foldline_service::kafka::await_reports_released(&committing);
            committing.commit_transaction(Duration::from_secs(30))
        })
        .await??;
        let _ = latencies.record(began.elapsed().as_micros() as u64);
        sent += n;
    }
    Ok((sent, latencies))
}
