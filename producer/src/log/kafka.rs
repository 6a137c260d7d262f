//! The lane log over Kafka: the group-committing [`Writer`] for appends, the Avro codec for
//! the records, [`super::tail`] for reading the tail.

use std::sync::Arc;

use foldline_schemas::wire::EventCodec;
use foldline_schemas::Envelope;
use foldline_service::kafka::SetupError;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::{AppendError, AppendFailed, LaneLog, Position, Trace};
use crate::metrics::Metrics;
use crate::partitioning::PartitionPolicy;
use crate::store::Store;
use crate::writer::{OutRecord, Writer};

pub struct KafkaLaneLog {
    pub writer: Writer,
    pub codec: Arc<EventCodec>,
    pub policy: PartitionPolicy,
    pub brokers: String,
    pub topic: String,
    pub partitions: Vec<i32>,
    pub metrics: Metrics,
}

impl KafkaLaneLog {
    async fn encode(
        &self,
        events: &[Envelope],
        trace: &Trace,
    ) -> Result<Vec<OutRecord>, AppendFailed> {
        let mut records = Vec::with_capacity(events.len());
        for event in events {
            records.push(OutRecord {
                partition: self.policy.partition_of(&event.product_id),
                key: event.product_id.clone(),
                value: self.codec.encode(event).await?,
                headers: vec![
                    ("event-type", event.event_type().as_str().to_owned()),
                    ("correlation-id", trace.correlation_id.clone()),
                    ("traceparent", trace.traceparent.clone()),
                ],
            });
        }
        Ok(records)
    }
}

impl LaneLog for KafkaLaneLog {
    fn status(&self) -> Result<(), AppendError> {
        self.writer.status()
    }

    fn append<'a>(
        &'a self,
        events: &'a [Envelope],
        trace: &'a Trace,
    ) -> BoxFuture<'a, Result<Vec<Position>, AppendFailed>> {
        async move {
            let records = self.encode(events, trace).await?;
            Ok(self.writer.append(records).await?)
        }
        .boxed()
    }

    fn tail_wanted(&self) -> BoxFuture<'_, ()> {
        self.writer.resync_requested().boxed()
    }

    fn read_tail<'a>(&'a self, store: &'a Store) -> BoxFuture<'a, Result<u64, SetupError>> {
        super::tail::read_tail(
            &self.brokers,
            &self.topic,
            &self.partitions,
            store,
            &self.codec,
            &self.metrics,
        )
        .boxed()
    }

    fn resume(&self) {
        self.writer.resume()
    }
}
