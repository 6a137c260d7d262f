//! The pipeline's dead letters: undecodable records published to the dead-letter topic before
//! the batch that skipped them is committed.

use super::*;

impl<Src: Source, Dec: Decoder, Dl: DeadLetters> Pipeline<Src, Dec, Dl> {
    pub(super) async fn publish_dead_letters(
        &self,
        letters: &[DeadLetter],
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ConsumerError> {
        let mut delays = Delays::new(retry::forever(
            Duration::from_millis(200),
            Duration::from_secs(10),
        ));
        loop {
            match self.dead_letters.publish(letters).await {
                Ok(0) => break,
                Ok(skipped) => {
                    // Read again after a crash before the batch was durable.
                    tracing::info!(
                        skipped,
                        "records this group had already dead-lettered were not appended again"
                    );
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "dead-letter topic unavailable; retrying");
                    if delays.sleep_or_stop(stop).await {
                        return Err(ConsumerError::DeadLettersUnavailable(error));
                    }
                }
            }
        }
        for letter in letters {
            let reason = if letter.value.is_none() {
                "empty"
            } else {
                "undecodable"
            };
            self.metrics
                .dead_lettered
                .with_label_values(&[reason])
                .inc();
        }
        Ok(())
    }
}
