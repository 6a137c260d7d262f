//! One way to wait between tries, for every retry loop of the project: exponential backoff
//! with jitter from [`backon`], never giving up on its own (a dependency that is down is waited
//! for; whether an error is worth retrying is decided by its type's `is_transient`), and a
//! sleep that ends early when the process is asked to stop.

use std::time::Duration;

pub use backon::{BackoffBuilder, BlockingRetryable, ExponentialBuilder, Retryable};

/// An error that knows whether trying again can help: the one place each error type decides
/// (as vector's `RetryLogic` does); retry loops and the consumer runtime ask it.
pub trait Transient {
    fn is_transient(&self) -> bool;
}

/// Delays from `first`, doubling up to `max`, each with random jitter (so instances that lost
/// a dependency together do not all come back at the same instant), for ever.
pub fn forever(first: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
}

/// The delays of a backoff, for loops that keep their own state between tries (partial
/// progress, a stop signal).
pub struct Delays(backon::ExponentialBackoff);

impl Delays {
    pub fn new(policy: ExponentialBuilder) -> Delays {
        Delays(policy.build())
    }

    /// The next delay (a policy from [`forever`] never runs out).
    pub fn next_delay(&mut self) -> Duration {
        self.0.next().unwrap_or(Duration::from_secs(1))
    }

    /// Sleeps the next delay; `true` when `stop` turned true meanwhile.
    pub async fn sleep_or_stop(&mut self, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = stop.wait_for(|s| *s) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_maximum_and_never_run_out() {
        let mut delays = Delays::new(forever(Duration::from_millis(100), Duration::from_secs(1)));
        let all: Vec<Duration> = (0..20).map(|_| delays.next_delay()).collect();
        assert!(all[0] >= Duration::from_millis(100) && all[0] <= Duration::from_millis(200));
        // Capped at the maximum (jitter may add up to as much again).
        assert!(all.iter().all(|d| *d <= Duration::from_secs(2)), "{all:?}");
        assert!(all[19] >= Duration::from_secs(1), "{all:?}");
    }

    #[tokio::test]
    async fn a_stop_signal_ends_the_sleep() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let mut delays = Delays::new(forever(Duration::from_secs(30), Duration::from_secs(60)));
        tx.send(true).unwrap();
        let started = std::time::Instant::now();
        assert!(delays.sleep_or_stop(&mut rx).await);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn transient_errors_are_retried_and_others_returned() {
        let mut calls = 0;
        let answer: Result<u32, &str> = (|| {
            calls += 1;
            let now = calls;
            async move {
                match now {
                    1 | 2 => Err("transient"),
                    _ => Ok(now),
                }
            }
        })
        .retry(forever(Duration::from_millis(1), Duration::from_millis(2)))
        .when(|e| *e == "transient")
        .await;
        assert_eq!(answer, Ok(3));
        let fatal: Result<u32, &str> = (|| async { Err("fatal") })
            .retry(forever(Duration::from_millis(1), Duration::from_millis(2)))
            .when(|e| *e == "transient")
            .await;
        assert_eq!(fatal, Err("fatal"));
    }
}
