//! The gate every write passes: rate limits and authentication, in that order of cost.
//!
//! A request with a valid token is limited per token subject; one without (or with a bad
//! token) per client address, so a flood of bad tokens is refused with 429 before it costs a
//! signature check each. Token buckets (governor) with a configurable rate and burst; a
//! refusal is 429 problem+json with `Retry-After`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::http::problem::Problem;
use foldline_service::auth::{refusal, Authenticator};

/// The default burst: the largest batch, so the documented maximum passes a full bucket.
pub const DEFAULT_BURST: u32 = crate::http::MAX_BATCH_COMMANDS as u32;

#[derive(clap::Args, Debug, Clone)]
pub struct RateLimitConfig {
    /// Writes per second allowed per token subject (and per client address without a token).
    #[arg(long, env = "FOLDLINE_RATE_LIMIT_PER_SEC", default_value_t = 200)]
    pub rate_limit_per_sec: u32,
    /// Writes allowed at once above the rate (the bucket's size). The default takes the
    /// largest batch the API accepts (`MAX_BATCH_COMMANDS`) in one go; a smaller burst
    /// refuses such a batch with 429 ("split it").
    #[arg(long, env = "FOLDLINE_RATE_LIMIT_BURST", default_value_t = DEFAULT_BURST)]
    pub rate_limit_burst: u32,
}

pub struct Gate {
    pub auth: Authenticator,
    by_subject: DefaultKeyedRateLimiter<String>,
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl Gate {
    pub fn new(auth: Authenticator, config: &RateLimitConfig) -> Arc<Gate> {
        let rate = NonZeroU32::new(config.rate_limit_per_sec.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(config.rate_limit_burst.max(1)).expect("at least 1");
        let quota = Quota::per_second(rate).allow_burst(burst);
        let gate = Arc::new(Gate {
            auth,
            by_subject: RateLimiter::keyed(quota),
            by_address: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        });
        // Forget idle buckets now and then, so memory stays bounded by the active clients.
        let weak = Arc::downgrade(&gate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(gate) = weak.upgrade() else { return };
                gate.by_subject.retain_recent();
                gate.by_address.retain_recent();
            }
        });
        gate
    }

    /// How long `key` must wait before `limiter` lets it through, if at all.
    fn wait<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
    ) -> Result<(), Duration> {
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// Middleware: rate limit, then authenticate; hands the [`crate::domain::Actor`] to the
/// handler.
pub async fn gate(
    State(gate): State<Arc<Gate>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    match gate.auth.authenticate(request.headers()).await {
        Ok(actor) => {
            if let Err(wait) = gate.wait(&gate.by_subject, &actor.subject) {
                return too_many(wait);
            }
            request.extensions_mut().insert(CommandCharge {
                gate: gate.clone(),
                subject: actor.subject.clone(),
            });
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(error) => {
            if let Err(wait) = gate.wait(&gate.by_address, &peer.ip()) {
                return too_many(wait);
            }
            refusal(error)
        }
    }
}

/// The rate limit counts commands, not requests: the gate charges a request's first command,
/// and a batch charges the rest through this, once its body is read.
#[derive(Clone)]
pub struct CommandCharge {
    gate: Arc<Gate>,
    subject: String,
}

impl CommandCharge {
    /// Charges `more` commands to the subject's bucket; a refusal is the 429 to answer.
    pub fn charge(&self, more: u32) -> Result<(), Response> {
        let Some(n) = NonZeroU32::new(more) else {
            return Ok(());
        };
        match self.gate.by_subject.check_key_n(&self.subject, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(too_many(not_until.wait_time_from(self.gate.clock.now()))),
            Err(_) => Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!("a batch of {} commands is more than the rate limit's burst allows at once: split it", more + 1),
            )
            .into_response()),
        }
    }
}

fn too_many(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!("retry in {seconds} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}
