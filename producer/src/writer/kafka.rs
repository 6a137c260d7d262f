//! The committer's log over Kafka: the transactional producer, one transaction per batch of
//! requests, and how its errors are classified (fenced, outcome unknown).

use std::sync::atomic::AtomicU8;
use std::time::Duration;

use foldline_service::kafka;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{reconnect, AppendError, AppendRequest, Position, TransactionalLog, WriterConfig};

pub(super) fn create_producer(config: &WriterConfig) -> Result<FutureProducer, KafkaError> {
    let producer: FutureProducer = kafka::producer_config(&config.brokers, "foldline-producer")
        .set("transactional.id", &config.transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("retry.backoff.ms", "5")
        .set("retry.backoff.max.ms", "100")
        .set("message.timeout.ms", "10000")
        .set("transaction.timeout.ms", "30000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    producer.init_transactions(Duration::from_secs(15))?;
    Ok(producer)
}

pub(super) fn is_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced
        )
    )
}

/// The transactional producer of the committer thread.
pub(super) struct KafkaLog {
    pub(super) config: WriterConfig,
    pub(super) producer: FutureProducer,
}

impl TransactionalLog for KafkaLog {
    fn commit(&mut self, batch: &[AppendRequest]) -> Result<Vec<Vec<Position>>, AppendError> {
        commit(&self.producer, &self.config, batch)
    }

    fn reinitialise(&mut self, health: &AtomicU8) -> bool {
        match reconnect(|| create_producer(&self.config), health, std::thread::sleep) {
            Some(producer) => {
                self.producer = producer;
                true
            }
            None => false,
        }
    }
}

fn commit(
    producer: &FutureProducer,
    config: &WriterConfig,
    batch: &[AppendRequest],
) -> Result<Vec<Vec<Position>>, AppendError> {
    let classify = |error: KafkaError| -> AppendError {
        if is_fenced(&error) {
            AppendError::Fenced
        } else {
            AppendError::OutcomeUnknown(error.to_string())
        }
    };
    producer.begin_transaction().map_err(classify)?;
    let mut deliveries = Vec::with_capacity(batch.len());
    for request in batch {
        let mut futures = Vec::with_capacity(request.records.len());
        for record in &request.records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let future = producer
                .send_result(
                    FutureRecord::to(&config.topic)
                        .partition(record.partition)
                        .key(&record.key)
                        .payload(&record.value)
                        .headers(headers),
                )
                .map_err(|(error, _)| error);
            match future {
                Ok(f) => futures.push(f),
                Err(error) if is_fenced(&error) => return Err(AppendError::Fenced),
                Err(error) => return Err(abort(producer, config, error.to_string())),
            }
        }
        deliveries.push(futures);
    }
    // Wait for every delivery report *before* committing, so that rust-rdkafka's flush inside
    // the commit finds nothing in flight (see `await_reports_released`). A failed delivery
    // aborts the transaction, so nothing of the batch becomes visible.
    let mut positions = Vec::with_capacity(deliveries.len());
    for futures in deliveries {
        let mut request_positions = Vec::with_capacity(futures.len());
        for future in futures {
            match futures::executor::block_on(future) {
                Ok(Ok(delivery)) => match delivered_at(delivery.partition, delivery.offset) {
                    Ok(position) => request_positions.push(position),
                    Err(reason) => return Err(AppendError::OutcomeUnknown(reason)),
                },
                // A newer instance owns the transactional.id (nisshi reports this per record,
                // as an abortable error): stop writing, whatever the abort would say.
                Ok(Err((error, _))) if is_fenced(&error) => return Err(AppendError::Fenced),
                Ok(Err((error, _))) => return Err(abort(producer, config, error.to_string())),
                Err(_) => return Err(abort(producer, config, "delivery cancelled".into())),
            }
        }
        positions.push(request_positions);
    }
    kafka::await_reports_released(producer);
    if let Err(error) = producer.commit_transaction(config.commit_timeout) {
        let requires_abort = matches!(&error, KafkaError::Transaction(e) if e.txn_requires_abort());
        if requires_abort {
            return Err(abort(producer, config, error.to_string()));
        }
        return Err(classify(error));
    }
    Ok(positions)
}

/// Where a delivered record went. A delivery without an offset (seen on nisshi right after a
/// broker restart, when librdkafka resent a batch the broker already had: it answered the
/// duplicate with offset -1) cannot be answered with its position, and the transaction's
/// fate is unknown (the restarted broker may have forgotten it, and its records then stay
/// visible whatever an abort says): the outcome is unknown, so the log is re-read before
/// writes go on and a client's retry with its Idempotency-Key finds its first answer there.
pub(super) fn delivered_at(partition: i32, offset: i64) -> Result<Position, String> {
    if offset < 0 {
        tracing::warn!(
            partition,
            offset,
            "the broker acknowledged a record without its offset; aborting the transaction"
        );
        return Err(format!(
            "the broker acknowledged a record in partition {partition} without its offset"
        ));
    }
    Ok(Position { partition, offset })
}

fn abort(producer: &FutureProducer, config: &WriterConfig, reason: String) -> AppendError {
    // A newer instance took over: say so, never re-initialise (that would fence it back).
    if let Some((code, _)) = producer.client().fatal_error() {
        if matches!(
            code,
            RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced
        ) {
            return AppendError::Fenced;
        }
    }
    match producer.abort_transaction(config.commit_timeout) {
        // The broker acknowledged the abort: a read_committed reader never sees the batch, so
        // nothing was appended and the state needs no re-read. That holds only on a broker
        // that keeps aborts (Kafka, Redpanda, the local log with its patch): the conformance
        // suite (`foldline-conformance`, read_committed_hides_aborted_transactions) proves it
        // of each.
        Ok(()) => AppendError::Unavailable(format!(
            "{reason}; the transaction was aborted, nothing was appended"
        )),
        Err(error) if is_fenced(&error) => AppendError::Fenced,
        Err(error) => AppendError::OutcomeUnknown(format!("{reason}; abort failed: {error}")),
    }
}
