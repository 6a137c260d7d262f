//! Disaster recovery: re-publish archived events into a topic, to the same partitions, in
//! offset order per partition, through an idempotent producer (retries cannot reorder or
//! double a record). Offsets in the new topic differ from the archived ones (transaction
//! markers and dead letters are not carried over); what is kept is each partition's order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use foldline_schemas::wire::EventCodec;
use foldline_service::kafka;
use foldline_service::position::Offsets;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::read::ArchiveReader;

#[derive(Debug)]
pub struct RestoreReport {
    pub events: u64,
    pub files: usize,
    pub elapsed: Duration,
}

/// Re-publishes every archived event at or after `from` (per partition) into `topic`.
pub async fn restore(
    reader: &ArchiveReader,
    log: &foldline_service::config::EventLog,
    from: &Offsets,
    show_progress: bool,
) -> anyhow::Result<RestoreReport> {
    let started = Instant::now();
    let metadata: BaseConsumer = kafka::base_config(&log.brokers, "foldline-restore").create()?;
    let partitions = kafka::partition_count(&metadata, &log.topic, Duration::from_secs(10))?;
    if let Some(highest) = reader.files.keys().next_back() {
        anyhow::ensure!(
            *highest < partitions,
            "the archive has partition {highest} but topic {} has only {partitions} partitions",
            log.topic
        );
    }
    // The target topic's subject may need registering: the codec signs an admin token for
    // the registry with FOLDLINE_JWT_SECRET (or sends FOLDLINE_REGISTRY_TOKEN).
    let codec = EventCodec::new(&log.registry_url, &log.topic)?;
    codec.writer_schema_id().await?;
    let producer: FutureProducer = kafka::producer_config(&log.brokers, "foldline-restore")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .create()?;
    let progress = if show_progress {
        let bar = ProgressBar::new(reader.offsets_after(from));
        bar.set_style(
            ProgressStyle::with_template(
                "restore {bar:40} {pos}/{len} offsets  {per_sec}  ETA {eta}",
            )
            .expect("valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut files = reader.stream(from);
    let (mut events, mut count) = (0u64, 0usize);
    while let Some(file) = files.recv().await {
        let file = file?;
        // Records are queued strictly in order (a full queue waits for the oldest delivery,
        // never lets a later record pass); memory stays bounded by one file.
        let mut deliveries = VecDeque::new();
        for record in &file.records {
            let value = codec.encode(&record.event).await?;
            loop {
                let mut message = FutureRecord::to(&log.topic)
                    .partition(record.partition)
                    .payload(&value);
                if let Some(key) = &record.key {
                    message = message.key(key.as_str());
                }
                if let Some(timestamp) = record.timestamp_ms {
                    message = message.timestamp(timestamp);
                }
                match producer.send_result(message) {
                    Ok(delivery) => {
                        deliveries.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        match deliveries.pop_front() {
                            Some(oldest) => delivered(oldest).await?,
                            None => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    Err((error, _)) => anyhow::bail!("could not queue a record: {error}"),
                }
            }
        }
        for delivery in deliveries {
            delivered(delivery).await?;
        }
        events += file.records.len() as u64;
        count += 1;
        progress.inc((file.range.last - file.range.first + 1) as u64);
    }
    progress.finish_and_clear();
    Ok(RestoreReport {
        events,
        files: count,
        elapsed: started.elapsed(),
    })
}

async fn delivered(delivery: DeliveryFuture) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => anyhow::bail!("the broker refused a record: {error}"),
        Err(_) => anyhow::bail!("the producer dropped a record"),
    }
}
