//! The Postgres projection on the real stack: it equals the fold of the topic after mixed
//! loads, crashes, database restarts, poison records, two instances, and a replay.

mod common;

use std::time::Duration;

use common::Stack;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn the_read_model_equals_the_fold_of_the_topic_and_answers_the_contract() {
    let stack = Stack::start().await;
    let _projector = stack.projector("g1").await;
    let ids = stack.mixed_load(30, 80, 1).await;

    // Read-your-writes: a write's position, then a read that waits for it.
    let answer = stack
        .write(
            Method::POST,
            &format!("/products/{}/stock", ids[0]),
            json!({"delta": 7}),
        )
        .await;
    if answer["status"] == 200 {
        let position = answer["body"]["position"].as_str().unwrap();
        let version = answer["body"]["version"].as_i64().unwrap();
        let (status, product) = stack
            .get(&format!("/products/{}?after={position}", ids[0]))
            .await;
        assert_eq!(status, 200);
        assert_eq!(product["version"], version, "the read saw the write");
    }
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    stack.assert_model_equals_fold(&events).await;

    // Pagination walks every live product exactly once.
    let mut seen = Vec::new();
    let mut stock_of = std::collections::BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/products?limit=7&cursor={c}"),
            None => "/products?limit=7".to_owned(),
        };
        let (status, page) = stack.get(&path).await;
        assert_eq!(status, 200);
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
            stock_of.insert(
                item["id"].as_str().unwrap().to_owned(),
                item["stock"].as_i64().unwrap(),
            );
            for field in [
                "id",
                "name",
                "price_cents",
                "stock",
                "seller_id",
                "version",
                "updated_at",
            ] {
                assert!(item.get(field).is_some(), "{field} missing in {item}");
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages are in id order without repeats");
    let (_, by_seller) = stack.get("/products?seller_id=seller-1&limit=1000").await;
    assert!(by_seller["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["seller_id"] == "seller-1"));
    // The low-stock list (the live page's): exactly the live products below the limit.
    let (status, low) = stack.get("/products?stock_below=5&limit=1000").await;
    assert_eq!(status, 200);
    let low: Vec<&str> = low["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = stock_of
        .iter()
        .filter(|(_, stock)| **stock < 5)
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        !want.is_empty() && want.len() < stock_of.len(),
        "the load leaves some products low"
    );
    assert_eq!(low, want);
    assert_eq!(stack.get("/products?stock_below=many").await.0, 400);

    // `/progress`: past a position once a read with `?after=` of it has answered.
    let answer = stack
        .write(
            Method::POST,
            &format!("/products/{}/stock", ids[1]),
            json!({"delta": 1}),
        )
        .await;
    if answer["status"] == 200 {
        let position = answer["body"]["position"].as_str().unwrap().to_owned();
        assert_eq!(
            stack
                .get(&format!("/products/{}?after={position}", ids[1]))
                .await
                .0,
            200
        );
        let (partition, offset) = position.split_once(':').unwrap();
        let (status, progress) = stack.get("/progress").await;
        assert_eq!(status, 200);
        let next = progress["next_offsets"][partition].as_i64().unwrap();
        assert!(
            next > offset.parse::<i64>().unwrap(),
            "{progress} vs {position}"
        );
    }

    // Errors: unknown product, position never reached (504), bad parameters (400).
    assert_eq!(stack.get("/products/nope").await.0, 404);
    assert_eq!(
        stack
            .get("/products/nope?after=0:999999&timeout_ms=300")
            .await
            .0,
        504
    );
    assert_eq!(stack.get("/products?after=zero").await.0, 400);
    assert_eq!(stack.get("/products?limit=0").await.0, 400);
    assert_eq!(stack.get("/products?colour=red").await.0, 400);
    assert_eq!(stack.get("/sellers/nobody/stats").await.0, 404);
}

#[tokio::test]
async fn a_kill_9_of_the_projector_mid_load_loses_nothing_and_counts_nothing_twice() {
    let stack = Stack::start().await;
    let mut projector = stack.projector("g1").await;
    let ids = stack.mixed_load(30, 10, 2).await;
    // Writes keep coming while the projector dies and comes back.
    let writer = async {
        for round in 0..6 {
            for id in ids.iter().take(10) {
                stack
                    .write(
                        Method::POST,
                        &format!("/products/{id}/stock"),
                        json!({"delta": 1 + round}),
                    )
                    .await;
            }
        }
    };
    let crash = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        projector.kill();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stack.projector("g1").await
    };
    let ((), _restarted) = tokio::join!(writer, crash);
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    stack.assert_model_equals_fold(&events).await;
}

#[tokio::test]
async fn a_postgres_restart_pauses_the_projector_which_then_resumes() {
    let stack = Stack::start().await;
    let projector = stack.projector("g1").await;
    let ids = stack.mixed_load(20, 10, 3).await;
    let stopped = foldline_testkit::postgres::StoppedPostgres::stop();
    // Written while the database is down: the projector must retry, not skip.
    for id in ids.iter().take(10) {
        stack
            .write(
                Method::POST,
                &format!("/products/{id}/stock"),
                json!({"delta": 2}),
            )
            .await;
    }
    projector
        .wait_not_ready(
            Duration::from_secs(20),
            "the projector must report not-ready while its database is down",
        )
        .await;
    drop(stopped);
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    stack.assert_model_equals_fold(&events).await;
    projector.wait_ready(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn garbage_and_unknown_schema_ids_go_to_the_dead_letter_topic() {
    let stack = Stack::start().await;
    let _projector = stack.projector("g1").await;
    let before = stack.mixed_load(5, 0, 4).await;
    let raw: FutureProducer =
        foldline_service::kafka::producer_config(&foldline_testkit::brokers(), "garbage")
            .create()
            .unwrap();
    let unknown_schema = [0u8, 0, 0, 0x27, 0x0f, 2, 4, 6];
    for (key, value) in [
        ("garbage", &b"not avro at all"[..]),
        ("unknown-schema", &unknown_schema[..]),
    ] {
        raw.send(
            FutureRecord::to(&stack.topic)
                .key(key)
                .payload(value)
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let after = stack.mixed_load(5, 0, 5).await;
    assert_eq!(before.len() + after.len(), 10);
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    stack.assert_model_equals_fold(&events).await;

    let letters = foldline_testkit::read_all(&foldline_testkit::brokers(), &stack.dlq).await;
    let keys: Vec<&[u8]> = letters.iter().filter_map(|m| m.key()).collect();
    assert_eq!(keys, [&b"garbage"[..], &b"unknown-schema"[..]]);
    assert_eq!(
        letters[1].payload(),
        Some(&unknown_schema[..]),
        "the original bytes"
    );
    for letter in &letters {
        use rdkafka::message::Headers;
        let headers = letter.headers().unwrap();
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        for name in [
            "dlq-reason",
            "dlq-source-topic",
            "dlq-source-partition",
            "dlq-source-offset",
        ] {
            assert!(names.contains(&name), "{name} missing: {names:?}");
        }
    }
}

/// Reads the dead-letter topic until it holds `count` records (or a minute passed).
async fn dead_letters(dlq: &str, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let letters = foldline_testkit::read_all(&foldline_testkit::brokers(), dlq).await;
        if letters.len() >= count || tokio::time::Instant::now() > deadline {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_record_dead_lettered_before_a_crash_is_not_dead_lettered_again() {
    let stack = Stack::start().await;
    let mut projector = stack.projector("dlq-once").await;
    stack.mixed_load(3, 0, 7).await;
    stack.wait_caught_up(stack.topic_events().await.len()).await;

    // PostgreSQL down: the projector dead-letters the garbage, then cannot make its batch
    // durable; killed then, it has appended the letter but stored no offset past it.
    let stopped = foldline_testkit::postgres::StoppedPostgres::stop();
    let raw: FutureProducer =
        foldline_service::kafka::producer_config(&foldline_testkit::brokers(), "garbage")
            .create()
            .unwrap();
    raw.send(
        FutureRecord::to(&stack.topic)
            .key("garbage")
            .payload(&b"not avro at all"[..])
            .partition(0),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(dead_letters(&stack.dlq, 1).await.len(), 1);
    projector.kill();
    drop(stopped);

    // The restarted projector reads the garbage again (its stored offset is before it).
    let _projector = stack.projector("dlq-once").await;
    stack.mixed_load(2, 0, 8).await;
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    stack.assert_model_equals_fold(&events).await;
    // Caught up past the garbage, so any second letter was appended before its batch.
    let letters = foldline_testkit::read_all(&foldline_testkit::brokers(), &stack.dlq).await;
    assert_eq!(letters.len(), 1, "the garbage was dead-lettered again");
}

#[tokio::test]
async fn two_projectors_in_one_group_still_give_the_exact_fold() {
    let stack = Stack::start().await;
    let _one = stack.projector("shared").await;
    let _two = stack.projector("shared").await;
    stack.mixed_load(30, 80, 6).await;
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    stack.assert_model_equals_fold(&events).await;
}

#[tokio::test]
async fn a_replay_swaps_in_a_complete_model_while_readers_keep_reading() {
    let stack = Stack::start().await;
    let projector = stack.projector("g1").await;
    stack.mixed_load(30, 60, 7).await;
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    let total = events.len() as u64;

    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let reading = reading.clone();
        let url = stack.query.url.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while reading.load(std::sync::atomic::Ordering::Acquire) {
                let response = reqwest::get(format!("{url}/analytics/summary"))
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap();
                answers.push((status, body["total_events"].as_u64()));
            }
            answers
        })
    };
    let output = stack.replay("g1", &["--json"], &[]).await;
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("replay --json prints one object");
    assert_eq!(report["events"], total, "{report}");
    assert_eq!(report["differences"], 0, "{report}");
    assert!(
        report["bulk"].is_object() && report["fell_back"].is_null(),
        "a log written through the API loads in bulk: {report}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    reading.store(false, std::sync::atomic::Ordering::Release);
    let answers = reader.await.unwrap();
    assert!(
        answers.len() > 3,
        "the reader kept reading during the replay"
    );
    for (status, seen) in &answers {
        assert_eq!(
            (*status, *seen),
            (200, Some(total)),
            "every answer is from a complete model"
        );
    }
    // The live projector goes on in the new model.
    stack.mixed_load(3, 0, 8).await;
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    stack.assert_model_equals_fold(&events).await;
    drop(projector);
}

/// Writes go on through the rebuild: the bulk is compared at a snapshot while the live
/// projector keeps applying them, the products they touched after it are compared again under
/// the swap lock, and the equal model is swapped in with nothing lost.
#[tokio::test]
async fn a_replay_while_writes_go_on_compares_at_a_snapshot_then_what_changed_and_swaps() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stack = Stack::start().await;
    let projector = stack.projector("g1").await;
    let ids = stack.mixed_load(40, 40, 31).await;
    stack.wait_caught_up(stack.topic_events().await.len()).await;

    let writing = AtomicBool::new(true);
    let writer = async {
        let mut written = 0usize;
        for round in 0usize.. {
            if !writing.load(Ordering::Acquire) {
                break;
            }
            let paths: Vec<String> = (0..8)
                .map(|i| format!("/products/{}", ids[(round * 8 + i) % ids.len()]))
                .collect();
            let writes = paths.iter().enumerate().map(|(i, path)| {
                let price = (round * 8 + i) as i64;
                stack.write(Method::PATCH, path, json!({ "price_cents": price }))
            });
            for answer in futures::future::join_all(writes).await {
                let status = answer["status"].as_u64().unwrap();
                assert!([200, 404].contains(&status), "{answer}");
                written += (status == 200) as usize;
            }
        }
        written
    };
    let replay = async {
        // Writes flow before the rebuild starts, and go on after it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let output = stack.replay("g1", &[], &[]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        writing.store(false, Ordering::Release);
        output
    };
    let (written, output) = tokio::join!(writer, replay);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{written} writes during the test; the rebuild printed:\n{printed}");
    assert!(written > 0);
    assert!(printed.contains("; 0 differences"), "{printed}");
    // Under the lock, the products written since the snapshot were compared (by their rows,
    // or by their history where the live projector had not yet read their latest events).
    let rechecked_history: u64 = printed
        .split(" of their history events")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no recheck in {printed}"));
    assert!(printed.contains("the swap lock was held "), "{printed}");
    assert!(
        rechecked_history > 0,
        "products written after the snapshot are compared again: {printed}"
    );

    // Nothing lost or doubled: the swapped-in model goes on to the fold of the whole log.
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;
    stack.assert_model_equals_fold(&events).await;
    stack.assert_histories_equal(&events).await;
    drop(projector);
}

/// The rebuild compares the new model with the live one before the swap: a live model a test
/// made differ (one product row changed, one history event gone) is named and not replaced,
/// until `--force`.
#[tokio::test]
async fn a_replay_refuses_a_model_that_differs_from_the_live_one() {
    use sqlx::Connection;
    let stack = Stack::start().await;
    let projector = stack.projector("g1").await;
    let ids = stack.mixed_load(12, 40, 21).await;
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;

    // Equal models: compared, swapped.
    let output = stack.replay("g1", &[], &[]).await;
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("0 differences"), "{printed}");

    let mut db = sqlx::PgConnection::connect(&stack.database_url)
        .await
        .unwrap();
    let live: String = sqlx::query_scalar("SELECT schema_name FROM foldline_meta.active_model")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let mut present = Vec::new();
    for id in &ids {
        if stack.get(&format!("/products/{id}")).await.0 == 200 {
            present.push(id.clone());
        }
    }
    let (changed, forgotten) = (&present[0], &present[1]);
    sqlx::query(&format!(
        "UPDATE {live}.products SET price_cents = price_cents + 1 WHERE id = $1"
    ))
    .bind(changed)
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query(&format!(
        "DELETE FROM {live}.product_events WHERE product_id = $1 AND version = 1"
    ))
    .bind(forgotten)
    .execute(&mut db)
    .await
    .unwrap();

    let output = stack.replay("g1", &[], &[]).await;
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains(&format!("differs: products {changed}:")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("differs: product_events {forgotten} v1:")),
        "{printed}"
    );
    assert!(printed.contains("2 differences"), "{printed}");
    // Not swapped, and the new schema is gone: the live model keeps serving.
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'model\\_%' ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(schemas, vec![live.clone()]);
    let (_, product) = stack.get(&format!("/products/{changed}")).await;
    let folded = stack.get(&format!("/products/{forgotten}")).await;
    assert_eq!(folded.0, 200);
    // The live projector went on after the refusal.
    stack.mixed_load(2, 4, 22).await;
    let events = stack.topic_events().await;
    stack.wait_caught_up(events.len()).await;

    // Forced: swapped in, and the model is the fold of the log again.
    let output = stack.replay("g1", &["--force"], &[]).await;
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("2 differences"), "{printed}");
    stack.assert_model_equals_fold(&events).await;
    stack.assert_histories_equal(&events).await;
    let (_, fixed) = stack.get(&format!("/products/{changed}")).await;
    assert_eq!(
        fixed["price_cents"].as_i64(),
        product["price_cents"].as_i64().map(|p| p - 1)
    );
    drop(projector);
}
