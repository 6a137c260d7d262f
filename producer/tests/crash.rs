//! The producer killed with SIGKILL while commits are in flight, under concurrent writers that
//! retry with their Idempotency-Key as clients should (issue 13). A producer that read the
//! log before fencing its predecessor could miss that predecessor's pending commit and decide
//! a retried command a second time: the audit finds such a command twice in the log.

use std::time::Duration;

use foldline_testkit::audit::{audit, read_events};
use foldline_testkit::load::{LoadPlan, Writers};
use foldline_testkit::process::Restartable;
use rand::Rng;

/// How many times the producer is killed (`FOLDLINE_CRASH_ROUNDS`, default 6).
fn rounds() -> usize {
    std::env::var("FOLDLINE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

#[tokio::test]
async fn a_producer_killed_mid_commit_under_retrying_writers_loses_and_doubles_nothing() {
    let topic = foldline_testkit::unique("products");
    // Restarted on the same port, so clients only see refused connections meanwhile.
    let mut producer = Restartable::producer(&topic).await;
    let writers = Writers::start(&[producer.service.url.clone()], LoadPlan::default()).await;

    for round in 1..=rounds() {
        let under_load = rand::rng().random_range(400..1500);
        tokio::time::sleep(Duration::from_millis(under_load)).await;
        let ready = producer.kill_and_restart().await;
        eprintln!(
            "round {round}: killed after {under_load} ms of load, ready again {ready:.1} s later"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = writers.stop().await;
    producer.kill();

    let events = read_events(
        &foldline_testkit::brokers(),
        &foldline_testkit::registry_url(),
        &topic,
    )
    .await;
    let audit = audit(&events, &report.acks);
    eprintln!("{audit}; {} client retries", report.retries);
    assert!(audit.problems.is_empty(), "{:#?}", audit.problems);
    assert!(
        report.acks.len() >= 50,
        "too little load to prove anything: {} acknowledged",
        report.acks.len()
    );
}
