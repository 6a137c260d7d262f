//! Pre-fills a topic with valid product histories (creates, then stock changes and price
//! updates with gap-free versions), Avro-encoded through the registry exactly as the producer
//! encodes them, sent with a plain idempotent producer: a million events in seconds.

use foldline_service::position::Offsets;
use std::time::{Duration, Instant};

use foldline_schemas::wire::EventCodec;
use foldline_schemas::{Envelope, Payload, ProductCreated, ProductUpdated, StockAdjusted};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    log: foldline_service::config::EventLog,
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    #[arg(long, default_value_t = 50_000)]
    products: usize,
    /// Write in transactions of this many events, one after another, as the producer's group
    /// commit does (0: no transactions, as fast as the broker takes them).
    #[arg(long, default_value_t = 0)]
    transaction_events: usize,
    /// Product ids are this and a number: a second fill with another prefix writes products
    /// of its own next to the first's.
    #[arg(long, default_value = "bench-")]
    id_prefix: String,
    /// Events per second, evenly spaced (0: as fast as the broker takes them).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    foldline_service::kafka::ensure_topic(
        &args.log.brokers,
        &args.log.topic,
        3,
        &[("retention.ms", "-1")],
    )
    .await?;
    let codec = EventCodec::new(&args.log.registry_url, &args.log.topic)?;
    let mut config =
        foldline_service::kafka::producer_config(&args.log.brokers, "foldline-bench-fill");
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    let transactions = args.transaction_events > 0;
    if transactions {
        config
            .set(
                "transactional.id",
                format!("foldline-bench-fill-{}", args.log.topic),
            )
            .set("linger.ms", "1");
    }
    let producer: FutureProducer = config.create()?;
    let txn_timeout = Duration::from_secs(30);
    if transactions {
        producer.init_transactions(txn_timeout)?;
        producer.begin_transaction()?;
    }
    let mut rng = StdRng::seed_from_u64(42);
    let ids: Vec<String> = (0..args.products)
        .map(|i| format!("{}{i:08}", args.id_prefix))
        .collect();
    let mut state: Vec<(i64, i64)> = vec![(0, 0); args.products]; // (version, stock)
    let mut pending = FuturesUnordered::new();
    let mut next = Offsets::new();
    let started = Instant::now();
    for n in 0..args.events {
        if args.rate > 0.0 {
            // Wait for this event's turn, serving the deliveries of those sent meanwhile.
            let due = tokio::time::Instant::from_std(started)
                + Duration::from_secs_f64(n as f64 / args.rate);
            loop {
                tokio::select! {
                    Some(done) = pending.next(), if !pending.is_empty() => note(Some(done), &mut next)?,
                    _ = tokio::time::sleep_until(due) => break,
                }
            }
        }
        let i = if n < args.products {
            n
        } else {
            rng.random_range(0..args.products)
        };
        let (version, stock) = &mut state[i];
        *version += 1;
        let payload = if *version == 1 {
            *stock = rng.random_range(0..100);
            Payload::ProductCreated(ProductCreated {
                name: format!("Bench item {i}"),
                price_cents: rng.random_range(100..10_000),
                stock: *stock,
                seller_id: format!("seller-{}", i % 500),
                low_stock_threshold: None,
            })
        } else if rng.random_range(0..10) == 0 {
            Payload::ProductUpdated(ProductUpdated {
                name: None,
                price_cents: Some(rng.random_range(100..10_000)),
            })
        } else {
            let delta = if *stock > 0 && rng.random_bool(0.5) {
                -1
            } else {
                1
            };
            *stock += delta;
            Payload::StockAdjusted(StockAdjusted {
                delta,
                new_stock: *stock,
                reason: None,
                previous_stock: *stock - delta,
            })
        };
        let event = Envelope {
            actor: None,
            event_id: uuid::Uuid::now_v7(),
            product_id: ids[i].clone(),
            version: *version,
            occurred_at: chrono::Utc::now(),
            correlation_id: "bench".into(),
            idempotency_key: None,
            command_index: None,
            payload,
        };
        let value = codec.encode(&event).await?;
        if transactions && n > 0 && n % args.transaction_events == 0 {
            while let Some(done) = pending.next().await {
                note(Some(done), &mut next)?;
            }
            foldline_service::kafka::await_reports_released(&producer);
            tokio::task::block_in_place(|| producer.commit_transaction(txn_timeout))?;
            producer.begin_transaction()?;
        }
        if pending.len() >= 50_000 {
            note(pending.next().await, &mut next)?;
        }
        let key = ids[i].clone();
        let topic = args.log.topic.clone();
        let producer = producer.clone();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(60),
                )
                .await
        });
    }
    while let Some(done) = pending.next().await {
        note(Some(done), &mut next)?;
    }
    if transactions {
        tokio::task::block_in_place(|| producer.commit_transaction(txn_timeout))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    crate::probe::print(&crate::probe::Filled {
        events: args.events,
        seconds,
        rate: args.events as f64 / seconds,
        transaction_events: args.transaction_events,
        end: next.iter().map(|(_, o)| o).sum::<i64>(),
    })
}

type Sent = Result<
    rdkafka::producer::future_producer::Delivery,
    (rdkafka::error::KafkaError, rdkafka::message::OwnedMessage),
>;

fn note(done: Option<Sent>, next: &mut Offsets) -> anyhow::Result<()> {
    if let Some(result) = done {
        let delivery = result.map_err(|(e, _)| anyhow::anyhow!("send failed: {e}"))?;
        next.advance(delivery.partition, delivery.offset);
    }
    Ok(())
}
