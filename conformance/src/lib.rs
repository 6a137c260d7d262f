//! The Kafka semantics Foldline's promises rest on, each checked against a broker.
//!
//! Foldline promises that a batch is atomic, that a refused or failed write leaves nothing,
//! and that each event is applied once. Those promises hold only if the broker keeps what
//! Kafka's transactions and idempotent producer promise. Each [`Check`] here tests one of
//! those promises with plain Kafka clients (rdkafka, nothing of Foldline's own write or read
//! path), on a topic of its own, so the suite runs against any bootstrap server: the local
//! broker in `scripts/test`, Redpanda or Kafka elsewhere. Checks that must kill the broker or
//! stand between it and the client need a broker the suite started itself ([`Target::own`]);
//! against any other server they are reported as not run.

pub mod checks;
pub mod client;
pub mod proxy;
pub mod target;

use std::time::{Duration, Instant};

use serde::Serialize;

pub use target::Target;

/// One promise of the broker and the code that tests it.
pub struct Check {
    /// A name that says the promise, e.g. `read_committed_hides_aborted_transactions`.
    pub name: &'static str,
    /// The promise in a sentence, for the report.
    pub promise: &'static str,
    /// Needs a broker the suite started (it kills it, or puts a proxy before it).
    pub needs_own_broker: bool,
    pub run: fn(&Target) -> anyhow::Result<()>,
}

/// What became of one check.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    Passed,
    Failed { reason: String },
    NotRun { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub name: &'static str,
    pub promise: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What the broker is, as the caller named it (`--label`), e.g. `nisshi 0.7.0 + patches`.
    pub label: Option<String>,
    pub brokers: String,
    /// `own` (a broker this suite started, with every check) or `given`.
    pub broker: &'static str,
    pub date: String,
    pub checks: Vec<CheckReport>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Failed { .. }))
            .count()
    }
}

/// Runs one check on `target` (blocking: checks drive rdkafka's synchronous clients).
pub fn run_check(check: &Check, target: &Target) -> CheckReport {
    let started = Instant::now();
    let outcome = if check.needs_own_broker && !target.is_own() {
        Outcome::NotRun {
            reason: "needs a broker the suite starts itself (--own-broker)".into(),
        }
    } else {
        match (check.run)(target) {
            Ok(()) => Outcome::Passed,
            Err(error) => Outcome::Failed {
                reason: format!("{error:#}"),
            },
        }
    };
    CheckReport {
        name: check.name,
        promise: check.promise,
        outcome,
        seconds: round_ms(started.elapsed()),
    }
}

/// Runs the checks named in `only` (all when empty), in order.
pub fn run_all(target: &Target, only: &[String], label: Option<String>) -> Report {
    let checks = checks::all()
        .into_iter()
        .filter(|c| only.is_empty() || only.iter().any(|n| n == c.name))
        .map(|check| {
            let report = run_check(&check, target);
            eprintln!("{}", line(&report));
            report
        })
        .collect();
    Report {
        label,
        brokers: target.brokers(),
        broker: if target.is_own() { "own" } else { "given" },
        date: chrono::Utc::now().to_rfc3339(),
        checks,
    }
}

/// One line per check: `PASS name (1.2 s)`, `FAIL name: reason`, `SKIP name: reason`.
pub fn line(report: &CheckReport) -> String {
    match &report.outcome {
        Outcome::Passed => format!("PASS {} ({:.1} s)", report.name, report.seconds),
        Outcome::Failed { reason } => format!("FAIL {}: {reason}", report.name),
        Outcome::NotRun { reason } => format!("SKIP {}: {reason}", report.name),
    }
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
