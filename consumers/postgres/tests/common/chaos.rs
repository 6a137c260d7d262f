//! The chaos run (issue 13): retrying writers load the producer while, one after another, the
//! producer (several times), the projector, the recent-events consumer, the archiver and the
//! notifier are SIGKILLed and restarted, the broker and the DynamoDB API are SIGKILLed and
//! restarted on their files, and PostgreSQL and the S3 server are stopped and started.
//! Afterwards: every acknowledged command in the log at its answered position, none twice,
//! versions 1..n; the read model equal to the fold of the log; DynamoDB holding each event
//! exactly once; the archive covering every offset once; an SSE client that reconnects with
//! Last-Event-ID across the kills received each event exactly once. Part of `scripts/test`;
//! `scripts/chaos` runs it alone on a stack of its own and shows its figures.
//!
//! The broker, the S3 server and the DynamoDB API are this test's own (so killing them disturbs
//! no other test); the schema registry stays on the shared broker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Stack;
use foldline_testkit::audit::{audit, audit_batches, read_events};
use foldline_testkit::dynamodb::own_dynamodb;
use foldline_testkit::load::{LoadPlan, Writers};
use foldline_testkit::process::Restartable;
use foldline_testkit::s3::own_s3;
use foldline_testkit::OwnBroker;
use rand::seq::SliceRandom;
use rand::Rng;

/// The run with `fleet_size` producers (several share the partitions).
pub async fn run(fleet_size: usize) {
    let mut broker = OwnBroker::start();
    // Every service this test starts, and the testkit's readers, inherit this address. The
    // test binary holds this one test, and no other thread reads the environment yet.
    std::env::set_var("FOLDLINE_BROKERS", broker.brokers());
    let mut s3 = own_s3();
    // The recent-events table lives in this test's DynamoDB API, which it kills mid-write.
    let mut dynamodb = own_dynamodb();
    let mut stack = Stack::start().await;
    // Several producers share the partitions (`partitions` mode); each producer kill hits
    // one of them.
    let fleet_id = foldline_testkit::unique("producer");
    let mut producers = Vec::new();
    for _ in 0..fleet_size {
        producers.push(Restartable::fleet_member(&stack.topic, &fleet_id, fleet_size > 1).await);
    }
    // The stack's own producer would be a second writer: this run's producers replace it.
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
    let table = foldline_testkit::unique("ChaosRecentEvents");
    let recent_group = foldline_testkit::unique("chaos-recent");
    let archiver_group = foldline_testkit::unique("chaos-archiver");
    let mut recent_events = Restartable::start(
        "foldline-recent-events",
        "FOLDLINE_RECENT_EVENTS_LISTEN",
        vec![
            ("FOLDLINE_TOPIC", stack.topic.clone()),
            ("FOLDLINE_DLQ_TOPIC", stack.dlq.clone()),
            ("FOLDLINE_RECENT_EVENTS_TABLE", table.clone()),
            ("FOLDLINE_DYNAMODB_ENDPOINT", dynamodb.url()),
            ("FOLDLINE_RECENT_EVENTS_GROUP", recent_group.clone()),
        ],
    )
    .await;
    // The archive goes to this test's S3 server, which it stops and starts.
    let archive_env = vec![
        ("FOLDLINE_S3_ENDPOINT", s3.url()),
        (
            "FOLDLINE_ARCHIVE_BUCKET",
            foldline_testkit::unique("chaos-archive"),
        ),
    ];
    let mut archiver_env = archive_env.clone();
    archiver_env.extend([
        ("FOLDLINE_TOPIC", stack.topic.clone()),
        ("FOLDLINE_DLQ_TOPIC", stack.dlq.clone()),
        ("FOLDLINE_ARCHIVER_GROUP", archiver_group.clone()),
        ("FOLDLINE_ARCHIVE_FILE_SECONDS", "1".into()),
    ]);
    let mut archiver = Restartable::start(
        "foldline-archiver",
        "FOLDLINE_ARCHIVER_LISTEN",
        archiver_env,
    )
    .await;
    let (stop_sse, sse_stopped) = tokio::sync::watch::channel(false);
    let sse = tokio::spawn(foldline_testkit::sse::follow(
        format!("{}/events/stream", notifier.service.url),
        sse_stopped,
    ));
    let urls: Vec<String> = producers.iter().map(|p| p.service.url.clone()).collect();
    // Atomic batches span partitions, which in a fleet belong to different producers (a batch
    // must stay with one owner): only the single producer gets them.
    let load = LoadPlan {
        batch_every: if fleet_size == 1 { 5 } else { 0 },
        ..LoadPlan::default()
    };
    let writers = Writers::start(&urls, load).await;

    // (what, seconds until ready again, instant of the kill, the partitions a killed
    // producer of a fleet served)
    let mut kills: Vec<(String, f64, Instant, Vec<i32>)> = Vec::new();
    // One kill of each (the producer three times) per round; `FOLDLINE_CHAOS_ROUNDS` rounds
    // (scripts/chaos runs more), later rounds in a shuffled order.
    let rounds: usize = std::env::var("FOLDLINE_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let mut plan = Vec::new();
    for round in 0..rounds {
        let mut targets = [
            "producer",
            "projector",
            "recent-events",
            "producer",
            "archiver",
            "broker",
            "notifier",
            "postgres",
            "s3",
            "dynamodb",
            "producer",
        ];
        if round > 0 {
            targets.shuffle(&mut rand::rng());
        }
        plan.extend(targets);
    }
    for target in plan {
        let under_load = rand::rng().random_range(1500..3500);
        tokio::time::sleep(Duration::from_millis(under_load)).await;
        // Which producer, and the partitions it serves, are read before the kill's instant
        // (an answer arriving meanwhile is not an answer after the kill).
        let n = rand::rng().random_range(0..producers.len());
        let mut victim = (target.to_owned(), Vec::new());
        if target == "producer" && producers.len() > 1 {
            let served = producers[n]
                .service
                .labels_set("producer_partition_served", "partition")
                .await;
            victim = (
                format!("producer {n} (partitions {})", served.join(",")),
                served.iter().filter_map(|p| p.parse().ok()).collect(),
            );
        }
        let at = Instant::now();
        let ready = match target {
            "producer" => producers[n].kill_and_restart().await,
            "projector" => projector.kill_and_restart().await,
            "notifier" => notifier.kill_and_restart().await,
            "archiver" => archiver.kill_and_restart().await,
            "recent-events" => recent_events.kill_and_restart().await,
            "broker" => {
                // SIGKILL: what the broker acknowledged must survive in its log file.
                broker.kill();
                tokio::time::sleep(Duration::from_secs(1)).await;
                broker.resume();
                for producer in &producers {
                    producer.service.wait_ready(Duration::from_secs(120)).await;
                }
                at.elapsed().as_secs_f64()
            }
            "s3" => {
                s3.kill();
                tokio::time::sleep(Duration::from_secs(3)).await;
                s3.resume();
                archiver.service.wait_ready(Duration::from_secs(120)).await;
                at.elapsed().as_secs_f64()
            }
            "dynamodb" => {
                // SIGKILL mid-write: what it acknowledged must be in its file; the consumer
                // retries the batch it was writing (the same items again).
                dynamodb.kill();
                tokio::time::sleep(Duration::from_secs(3)).await;
                dynamodb.resume();
                recent_events
                    .service
                    .wait_ready(Duration::from_secs(120))
                    .await;
                at.elapsed().as_secs_f64()
            }
            _ => {
                let stopped = foldline_testkit::postgres::StoppedPostgres::stop();
                tokio::time::sleep(Duration::from_secs(3)).await;
                drop(stopped);
                projector.service.wait_ready(Duration::from_secs(120)).await;
                at.elapsed().as_secs_f64()
            }
        };
        eprintln!(
            "chaos: {} down after {under_load} ms of load; ready again {ready:.1} s later",
            victim.0
        );
        kills.push((victim.0, ready, at, victim.1));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = writers.stop().await;

    let events = read_events(
        &foldline_testkit::brokers(),
        &foldline_testkit::registry_url(),
        &stack.topic,
    )
    .await;
    let mut audit = audit(&events, &report.acks);
    audit_batches(&mut audit, &events, &report.batches);
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

    let archived = archive_covers(&archive_env, &events).await;
    let recent = recent_events_once(&dynamodb.url(), &table, &events).await;

    // `foldline verify` on the stack after its outages: every projection equals the fold of
    // the log at its own cut (the read model's offsets, the consumers' committed offsets).
    let (dynamodb_url, s3_url) = (dynamodb.url(), s3.url());
    let bucket = archive_env[1].1.clone();
    let (verified, verify_out) = stack.verify(
        "chaos",
        &[],
        &[
            ("FOLDLINE_RECENT_EVENTS_TABLE", table.as_str()),
            ("FOLDLINE_RECENT_EVENTS_GROUP", recent_group.as_str()),
            ("FOLDLINE_DYNAMODB_ENDPOINT", dynamodb_url.as_str()),
            ("FOLDLINE_ARCHIVER_GROUP", archiver_group.as_str()),
            ("FOLDLINE_S3_ENDPOINT", s3_url.as_str()),
            ("FOLDLINE_ARCHIVE_BUCKET", bucket.as_str()),
        ],
    );
    for line in verify_out.lines() {
        eprintln!("chaos: verify: {line}");
    }

    eprintln!("chaos: {audit}; {} client retries", report.retries);
    eprintln!("chaos: archive: {archived}");
    eprintln!("chaos: DynamoDB: {recent}");
    eprintln!(
        "chaos: read model equal to the fold of {} events; SSE client: {} events over {} connections, {sse_missing} missing, {sse_twice} twice",
        envelopes.len(),
        followed.events.len(),
        followed.connections
    );
    let seconds =
        |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
    for (target, ready, at, partitions) in &kills {
        let after = |on: &dyn Fn(&str) -> bool| {
            report
                .acks
                .iter()
                .filter(|a| a.at > *at && on(&a.position))
                .map(|a| a.at - *at)
                .min()
        };
        let accepted = after(&|_| true);
        let moved = if partitions.is_empty() {
            String::new()
        } else {
            let on_moved = after(&|position| {
                position
                    .split(':')
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
                    .is_some_and(|p| partitions.contains(&p))
            });
            format!(
                "; first write on its partitions {} after it",
                seconds(on_moved)
            )
        };
        eprintln!(
            "chaos: {target}: ready {ready:.1} s after the kill; next write accepted {} after it{moved}",
            seconds(accepted)
        );
    }
    assert!(audit.problems.is_empty(), "{:#?}", audit.problems);
    assert_eq!((sse_missing, sse_twice), (0, 0), "SSE: missing, twice");
    assert!(archived.starts_with("every offset"), "archive: {archived}");
    assert!(recent.starts_with("every event"), "DynamoDB: {recent}");
    assert_eq!(verified, Some(0), "foldline verify: {verify_out}");
    assert!(
        report.acks.len() >= 100,
        "too little load: {}",
        report.acks.len()
    );
    assert!(
        fleet_size > 1 || audit.batches_in_log >= 10,
        "too few atomic batches reached the log: {audit}"
    );
}

/// Waits (up to a minute) until `foldline-archiver list` reports files without gap or overlap
/// from offset 0 up to each partition's last event; describes what it found.
async fn archive_covers(
    env: &[(&'static str, String)],
    events: &[foldline_testkit::audit::LoggedEvent],
) -> String {
    let mut last: HashMap<i32, i64> = HashMap::new();
    for event in events {
        let entry = last.entry(event.partition).or_insert(event.offset);
        *entry = (*entry).max(event.offset);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output =
            tokio::process::Command::new(foldline_testkit::process::binary("foldline-archiver"))
                .arg("list")
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .output()
                .await
                .unwrap();
        let report = String::from_utf8_lossy(&output.stderr);
        let ends: HashMap<i32, i64> = report
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("partition ")?;
                let (partition, rest) = rest.split_once(": archived up to offset ")?;
                Some((partition.trim().parse().ok()?, rest.trim().parse().ok()?))
            })
            .collect();
        let files = String::from_utf8_lossy(&output.stdout).lines().count();
        let covered = last
            .iter()
            .all(|(p, o)| ends.get(p).is_some_and(|end| end >= o));
        if output.status.success() && covered {
            return format!("every offset of {} partitions in exactly one of {files} files (no gap, no overlap)", last.len());
        }
        if Instant::now() > deadline {
            return format!(
                "incomplete after a minute: list exit {:?}, archived up to {ends:?}, log ends {last:?}: {report}",
                output.status.code()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (up to a minute) until the recent-events table holds, under `product#<id>` and under
/// `day#<date>`, one item for each event of the log and nothing else (an event of an aborted
/// transaction, or one written twice under another key, would show); describes what it found.
async fn recent_events_once(
    endpoint: &str,
    table: &str,
    events: &[foldline_testkit::audit::LoggedEvent],
) -> String {
    let client = foldline_recent_events::DynamoDb {
        aws: foldline_service::aws::AwsEndpoint {
            region: "us-east-1".into(),
            local_access_key: "foldline".into(),
            local_secret_key: "foldline-secret".into(),
        },
        dynamodb_endpoint: endpoint.to_owned(),
    }
    .client()
    .await;
    let logged: HashMap<String, ()> = events
        .iter()
        .map(|e| (e.envelope.event_id.to_string(), ()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // event id → (items under its product, items under its day)
        let mut items: HashMap<String, (usize, usize)> = HashMap::new();
        let mut pages = client.scan().table_name(table).into_paginator().send();
        while let Some(Ok(page)) = pages.next().await {
            for item in page.items() {
                let text = |key: &str| item.get(key).and_then(|v| v.as_s().ok()).cloned();
                let (Some(pk), Some(event_id)) = (text("pk"), text("event_id")) else {
                    continue;
                };
                let counts = items.entry(event_id).or_default();
                if pk.starts_with("product#") {
                    counts.0 += 1;
                } else {
                    counts.1 += 1;
                }
            }
        }
        let missing = logged.keys().filter(|id| !items.contains_key(*id)).count();
        let unknown = items.keys().filter(|id| !logged.contains_key(*id)).count();
        let not_once = items.values().filter(|c| **c != (1, 1)).count();
        if (missing, unknown, not_once) == (0, 0, 0) {
            return format!(
                "every event of the log once under its product and once under its day ({} events)",
                logged.len()
            );
        }
        if Instant::now() > deadline {
            return format!(
                "after a minute: {missing} events missing, {unknown} items of events not in the log, {not_once} events without exactly one item under product and day"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
