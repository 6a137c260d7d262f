//! The chaos run (issue 13), first slice: retrying writers load the producer while the
//! producer (several times), the projector and the notifier are SIGKILLed and restarted and
//! PostgreSQL is stopped and started, one after another. Afterwards: every acknowledged
//! command in the log at its answered position, none twice, versions 1..n; the read model equal
//! to the fold of the log; an SSE client that reconnects with Last-Event-ID across the kills
//! received each event exactly once. Part of `scripts/test`; `scripts/chaos` runs it alone on a
//! stack of its own and shows its figures.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Stack;
use foldline_testkit::audit::{audit, read_events};
use foldline_testkit::load::{LoadPlan, Writers};
use foldline_testkit::process::{free_port, Service};
use rand::Rng;

/// A service that is restarted on the same port with the same settings.
struct Restartable {
    bin: &'static str,
    env: Vec<(&'static str, String)>,
    port: u16,
    service: Service,
}

impl Restartable {
    async fn start(
        bin: &'static str,
        listen_var: &'static str,
        env: Vec<(&'static str, String)>,
    ) -> Self {
        let port = free_port();
        let mut env = env;
        env.push((listen_var, format!("127.0.0.1:{port}")));
        let service = Service::spawn(bin, &[], &env, port);
        service.wait_ready(Duration::from_secs(60)).await;
        Restartable {
            bin,
            env,
            port,
            service,
        }
    }

    /// SIGKILL, start again at once; returns the seconds until `/ready`.
    async fn kill_and_restart(&mut self) -> f64 {
        self.service.kill();
        let killed = Instant::now();
        self.service = Service::spawn(self.bin, &[], &self.env, self.port);
        self.service.wait_ready(Duration::from_secs(120)).await;
        killed.elapsed().as_secs_f64()
    }
}

#[tokio::test]
async fn chaos_kills_lose_and_double_nothing() {
    let mut stack = Stack::start().await;
    let mut producer = Restartable::start(
        "foldline-producer",
        "FOLDLINE_PRODUCER_LISTEN",
        vec![
            ("FOLDLINE_TOPIC", stack.topic.clone()),
            (
                "FOLDLINE_TRANSACTIONAL_ID",
                foldline_testkit::unique("chaos"),
            ),
        ],
    )
    .await;
    // The stack's own producer would be a second writer: this run's producer replaces it.
    stack.producer.kill();
    let mut projector = Restartable::start(
        "foldline-projector",
        "FOLDLINE_PROJECTOR_LISTEN",
        stack.projector_env("chaos"),
    )
    .await;
    let mut notifier = Restartable::start(
        "foldline-notifier",
        "FOLDLINE_NOTIFIER_LISTEN",
        vec![("FOLDLINE_TOPIC", stack.topic.clone())],
    )
    .await;
    let (stop_sse, sse_stopped) = tokio::sync::watch::channel(false);
    let sse = tokio::spawn(foldline_testkit::sse::follow(
        format!("{}/events/stream", notifier.service.url),
        sse_stopped,
    ));
    let writers = Writers::start(&producer.service.url, LoadPlan::default()).await;

    // (what, seconds until ready again, instant of the kill)
    let mut kills: Vec<(&str, f64, Instant)> = Vec::new();
    for target in [
        "producer",
        "projector",
        "producer",
        "notifier",
        "postgres",
        "producer",
    ] {
        let under_load = rand::rng().random_range(1500..3500);
        tokio::time::sleep(Duration::from_millis(under_load)).await;
        let at = Instant::now();
        let ready = match target {
            "producer" => producer.kill_and_restart().await,
            "projector" => projector.kill_and_restart().await,
            "notifier" => notifier.kill_and_restart().await,
            _ => {
                let stopped = foldline_testkit::postgres::StoppedPostgres::stop();
                tokio::time::sleep(Duration::from_secs(3)).await;
                drop(stopped);
                projector.service.wait_ready(Duration::from_secs(120)).await;
                at.elapsed().as_secs_f64()
            }
        };
        eprintln!(
            "chaos: {target} down after {under_load} ms of load; ready again {ready:.1} s later"
        );
        kills.push((target, ready, at));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = writers.stop().await;

    let events = read_events(
        &foldline_testkit::brokers(),
        &foldline_testkit::registry_url(),
        &stack.topic,
    )
    .await;
    let audit = audit(&events, &report.acks);
    let envelopes: Vec<_> = events.iter().map(|e| e.envelope.clone()).collect();
    stack.wait_caught_up(envelopes.len()).await;
    stack.assert_model_equals_fold(&envelopes).await;

    // The SSE client has every event once, whatever the notifier's restarts cut off (the read
    // model caught up above; the notifier tails the log at least as fast).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop_sse.send(true);
    let followed = sse.await.unwrap();
    let mut received: HashMap<String, usize> = HashMap::new();
    for event in &followed.events {
        *received
            .entry(
                event.data["event_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default() += 1;
    }
    let sse_missing = envelopes
        .iter()
        .filter(|e| !received.contains_key(&e.event_id.to_string()))
        .count();
    let sse_twice = received.values().filter(|n| **n > 1).count();

    eprintln!("chaos: {audit}; {} client retries", report.retries);
    eprintln!(
        "chaos: read model equal to the fold of {} events; SSE client: {} events over {} connections, {sse_missing} missing, {sse_twice} twice",
        envelopes.len(),
        followed.events.len(),
        followed.connections
    );
    for (target, ready, at) in &kills {
        let accepted = report
            .acks
            .iter()
            .filter(|a| a.at > *at)
            .map(|a| a.at - *at)
            .min();
        eprintln!(
            "chaos: {target}: ready {ready:.1} s after the kill; next write accepted {} after it",
            accepted.map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
    }
    assert!(audit.problems.is_empty(), "{:#?}", audit.problems);
    assert_eq!((sse_missing, sse_twice), (0, 0), "SSE: missing, twice");
    assert!(
        report.acks.len() >= 100,
        "too little load: {}",
        report.acks.len()
    );
}
