//! Reading the `products` topic into the [`Store`]: at start-up (from the beginning) and
//! after a failed commit (from where the state ends).

use std::time::Duration;

use foldline_schemas::wire::EventCodec;
use foldline_service::kafka::{self, SetupError};
use rdkafka::Message;

use crate::metrics::Metrics;
use crate::store::Store;
use crate::writer::Position;

/// Folds every committed event after the store's offsets into the store; returns how many
/// events were read. Undecodable records are skipped (and counted); a registry outage is
/// waited out, never skipped, so the state cannot silently miss events.
pub async fn replay(
    brokers: &str,
    topic: &str,
    store: &Store,
    codec: &EventCodec,
    metrics: &Metrics,
) -> Result<u64, SetupError> {
    let start = store.next_offsets();
    let mut events = 0_u64;
    kafka::read_to_end(brokers, "foldline-producer-replay", topic, &start, |message| {
        let position = Position {
            partition: message.partition(),
            offset: message.offset(),
        };
        events += 1;
        async move {
            let Some(bytes) = message.payload() else {
                store.note_positions(&[position]);
                return;
            };
            loop {
                match codec.decode(bytes).await {
                    Ok(envelope) => {
                        store.apply_logged(&envelope, position).await;
                        metrics.replayed_events.inc();
                        return;
                    }
                    Err(error) if error.is_transient() => {
                        tracing::warn!(%error, "registry unavailable while replaying, retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, %position, "skipping undecodable record");
                        metrics.undecodable_events.inc();
                        store.note_positions(&[position]);
                        return;
                    }
                }
            }
        }
    })
    .await?;
    Ok(events)
}
