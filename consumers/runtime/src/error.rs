//! The runtime's errors, typed: what its traits answer ([`SourceError`],
//! [`crate::SinkError`], [`DeadLetterError`], [`HistoryError`]) and why a consumer stopped
//! ([`ConsumerError`]). A sink's own error (sqlx, the AWS SDK, its own enum) travels inside
//! as a [`BoxError`], kept as the source so its chain is printed whole.

use foldline_schemas::wire::CodecError;
use foldline_service::kafka::SetupError;
use rdkafka::error::KafkaError;

/// An error of a sink's or a reader's dependency, kept with its chain of causes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error and every cause under it, `outer: inner: …` (what parked reasons and logs show).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        // Wrappers that print their source in their own message are not repeated.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    text
}

/// What reading the consumer's partitions failed on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("a reader of the topic: {0}")]
    Reader(#[from] SetupError),
    #[error("record {partition}:{offset} is no longer in the topic")]
    Gone { partition: i32, offset: i64 },
    #[error("record {partition}:{offset} has no value")]
    NoValue { partition: i32, offset: i64 },
    #[error("record {partition}:{offset} cannot be decoded: {error}")]
    Undecodable {
        partition: i32,
        offset: i64,
        error: CodecError,
    },
    #[error("this source cannot read records again")]
    CannotReadAgain,
}

/// What appending dead letters failed on (retried by the pipeline until it stops).
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("the dead-letter producer: {0}")]
    Producer(#[source] KafkaError),
    #[error("reading the dead-letter topic back: {0}")]
    ReadBack(#[from] SetupError),
    #[error("dead-letter append failed: {0}")]
    Append(#[source] KafkaError),
}

/// What reading history for a rebuild failed on.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("reading the topic: {0}")]
    Topic(#[from] SetupError),
    #[error("reading the topic: {0}")]
    Kafka(#[from] KafkaError),
    #[error("reading the archive: {0}")]
    Archive(#[source] BoxError),
    /// The rebuild stopped taking batches (it failed or was stopped).
    #[error("the rebuild stopped taking batches")]
    Stopped,
}

impl<T> From<tokio::sync::mpsc::error::SendError<T>> for HistoryError {
    fn from(_: tokio::sync::mpsc::error::SendError<T>) -> Self {
        HistoryError::Stopped
    }
}

/// Why a consumer stopped (anything else it retries, or parks).
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("the sink failed: {}", chain(.0.as_ref()))]
    Sink(BoxError),
    #[error("the sink refused the data, and it does not park: {}", chain(.0.as_ref()))]
    RefusedWithoutParking(BoxError),
    #[error("a flush cannot park: {}", chain(.0.as_ref()))]
    RefusedFlush(BoxError),
    #[error("the sink refused a batch of parked records only: {}", chain(.0.as_ref()))]
    RefusedParkedOnly(BoxError),
    #[error("the source: {0}")]
    Source(#[from] SourceError),
    #[error("stopped while the dead-letter topic was unavailable: {0}")]
    DeadLettersUnavailable(DeadLetterError),
}

/// Why a consumer binary's run ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("binding the ops listener: {0}")]
    Listen(#[source] std::io::Error),
    #[error("the consumer group's client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the schema registry: {0}")]
    Codec(#[from] CodecError),
    #[error("the dead-letter queue: {0}")]
    DeadLetters(#[from] DeadLetterError),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_cause_once() {
        let inner = std::io::Error::other("disk full");
        assert_eq!(chain(&Outer(inner)), "outer: disk full");
        let folded = SourceError::Kafka(KafkaError::Canceled);
        assert_eq!(chain(&folded), folded.to_string());
    }
}
