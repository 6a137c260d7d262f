//! Several producers sharing the topic's partitions (`FOLDLINE_PRODUCER_OWNERSHIP=partitions`),
//! as separate processes on the real broker: forwarding, batches, and a SIGKILL under load
//! with retrying clients.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_gap_free, read_topic};
use foldline_producer::partitioning::partition_of;
use foldline_schemas::Payload;
use foldline_testkit::process::Spawned;
use serde_json::{json, Value};

const INSTANCES: usize = 3;

/// One producer of the fleet `fleet_id` on `topic`.
async fn instance(topic: &str, fleet_id: &str) -> Spawned {
    Spawned::start(
        "foldline-producer",
        "FOLDLINE_PRODUCER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.to_owned()),
            ("FOLDLINE_TRANSACTIONAL_ID", fleet_id.to_owned()),
            ("FOLDLINE_PRODUCER_OWNERSHIP", "partitions".to_owned()),
        ],
    )
    .await
}

/// Three producers of one fleet (one transactional id prefix, returned) on `topic`, each
/// serving one of its three partitions.
async fn fleet(topic: &str) -> (String, Vec<Spawned>) {
    let fleet_id = foldline_testkit::unique("fleet");
    let mut producers = Vec::new();
    for _ in 0..INSTANCES {
        producers.push(instance(topic, &fleet_id).await);
    }
    wait_shared(&producers, 3, Duration::from_secs(60)).await;
    (fleet_id, producers)
}

/// Waits until the live producers serve `partitions` in all, each at least one.
async fn wait_shared(producers: &[Spawned], partitions: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut served = Vec::new();
        for producer in producers {
            served.push(producer.metric("producer_partitions_served").await as usize);
        }
        let ready = futures::future::join_all(
            producers
                .iter()
                .map(|p| reqwest::get(format!("{}/ready", p.url))),
        )
        .await
        .into_iter()
        .all(|r| r.is_ok_and(|r| r.status() == 200));
        if ready && served.iter().sum::<usize>() == partitions && served.iter().all(|n| *n >= 1) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions not shared within {limit:?}: {served:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn send(url: &str, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = foldline_testkit::auth::client()
        .post(format!("{url}{path}"))
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

fn create_body(stock: i64) -> Value {
    json!({"name": "Lamp", "price_cents": 100, "stock": stock, "seller_id": "s1"})
}

#[tokio::test]
async fn producers_share_the_partitions_and_forward_what_they_do_not_write() {
    let topic = foldline_testkit::unique("products");
    let (_, producers) = fleet(&topic).await;
    let urls: Vec<String> = producers.iter().map(|p| p.url.clone()).collect();

    // Creates through every instance; a create's partition is its key's.
    let mut products = Vec::new();
    for n in 0..9 {
        let key = format!("{topic}-create-{n}");
        let (status, body) = send(
            &urls[n % INSTANCES],
            "/products",
            Some(&key),
            create_body(50),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        let position: &str = body["position"].as_str().unwrap();
        assert_eq!(
            position.split(':').next().unwrap().parse::<i32>().unwrap(),
            partition_of(&key, 3),
            "a create goes to its Idempotency-Key's partition, so a retry anywhere finds it"
        );
        assert_eq!(
            partition_of(&id, 3),
            partition_of(&key, 3),
            "its id hashes there too"
        );
        // The same key through another instance: the first answer, nothing appended.
        let (status, again) = send(
            &urls[(n + 1) % INSTANCES],
            "/products",
            Some(&key),
            create_body(50),
        )
        .await;
        assert_eq!((status, &again), (201, &body));
        products.push(id);
    }
    // Every product changed through every instance: two of three requests are forwarded.
    for id in &products {
        for url in &urls {
            let (status, body) = send(
                url,
                &format!("/products/{id}/stock"),
                None,
                json!({"delta": -1}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    }
    let mut forwarded = 0.0;
    for producer in &producers {
        forwarded += producer
            .metric("producer_forwarded_requests_total{outcome=\"answered\"}")
            .await;
    }
    assert!(forwarded >= 18.0, "forwarded {forwarded}");

    // A batch over two partitions is refused whole; one within a partition is atomic.
    let (a, b) = products
        .iter()
        .flat_map(|a| products.iter().map(move |b| (a, b)))
        .find(|(a, b)| partition_of(a, 3) != partition_of(b, 3))
        .unwrap();
    let (status, problem) = send(
        &urls[0],
        "/commands",
        None,
        json!({"commands": [
            {"op": "adjust_stock", "id": a, "delta": 1},
            {"op": "adjust_stock", "id": b, "delta": 1}]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        problem["type"],
        "urn:foldline:problem:batch-spans-partitions"
    );
    let (status, body) = send(
        &urls[1],
        "/commands",
        None,
        json!({"commands": [
            {"op": "create", "name": "Shade", "price_cents": 5, "stock": 1, "seller_id": "s1"},
            {"op": "adjust_stock", "id": a, "delta": 2}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let created = body["results"][0]["id"].as_str().unwrap();
    assert_eq!(
        partition_of(created, 3),
        partition_of(a, 3),
        "the batch's new product joins its partition"
    );

    // Bad input through the forwarding layer: clear problems, nothing appended.
    let client = foldline_testkit::auth::client();
    let huge = client
        .post(format!("{}/products/{a}/stock", urls[2]))
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let problem: Value = huge.json().await.unwrap();
    assert_eq!(problem["type"], "urn:foldline:problem:body-too-large");
    let malformed = client
        .post(format!("{}/products/{b}/stock", urls[0]))
        .header("content-type", "application/json")
        .body("{\"delta\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);

    let events = read_topic(&foldline_testkit::brokers(), &topic).await;
    let last = assert_gap_free(&events);
    // 9 creates, 27 adjustments, the batch's create and adjustment; nothing of the refused one.
    assert_eq!(events.len(), 9 + 27 + 2, "no more and no fewer events");
    assert_eq!(last[a.as_str()], 5);
    assert_eq!(last[b.as_str()], 4);
    for (event, partition, _) in &events {
        assert_eq!(
            *partition,
            partition_of(&event.product_id, 3),
            "events go to their key's partition"
        );
    }
}

/// Clients that retry (with their Idempotency-Key) on 503 and on refused connections, moving
/// to another instance when theirs is gone — what a load balancer in front would do.
async fn write_until_acknowledged(urls: &[String], start: usize, id: &str, key: &str) -> u64 {
    let client = foldline_testkit::auth::client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    loop {
        let url = &urls[(start + attempt) % urls.len()];
        let sent = client
            .post(format!("{url}/products/{id}/stock"))
            .header("Idempotency-Key", key)
            .json(&json!({"delta": 1}))
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 200 => return attempt as u64,
            Ok(r) if r.status() == 503 => {}
            Ok(r) => panic!(
                "{key}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Err(_) => attempt += 1, // the instance is gone: another one
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} not acknowledged within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_killed_producers_partitions_move_to_the_survivors_with_nothing_lost_or_doubled() {
    let topic = foldline_testkit::unique("products");
    let (_, mut producers) = fleet(&topic).await;
    let urls: Vec<String> = producers.iter().map(|p| p.url.clone()).collect();
    let mut products = Vec::new();
    for n in 0..12 {
        let (status, body) = send(&urls[n % INSTANCES], "/products", None, create_body(0)).await;
        assert_eq!(status, 201, "{body}");
        products.push(body["id"].as_str().unwrap().to_owned());
    }
    let victim_partitions = producers[0].metric("producer_partitions_served").await;
    assert!(victim_partitions >= 1.0);

    // Twelve writers, each on its own product, through every instance, while one instance
    // is killed mid-stream.
    let live = Arc::new(tokio::sync::RwLock::new(urls.clone()));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for (n, id) in products.iter().enumerate() {
        let (live, acknowledged, stop, id, topic) = (
            live.clone(),
            acknowledged.clone(),
            stop.clone(),
            id.clone(),
            topic.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                let key = format!("{topic}-{n}-{i}");
                let urls = live.read().await.clone();
                write_until_acknowledged(&urls, n + i, &id, &key).await;
                acknowledged.lock().unwrap().push(key);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    producers[0].kill();
    live.write().await.remove(0);
    // Writes keep being acknowledged; the dead one's partitions move to the survivors.
    wait_shared(&producers[1..], 3, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    for writer in writers {
        writer.await.unwrap();
    }

    let acknowledged: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    assert_each_acknowledged_once(&topic, &acknowledged).await;
    assert!(
        acknowledged.len() > 24,
        "writes went on: {} acknowledged",
        acknowledged.len()
    );
}

/// The audit of a run: every acknowledged key appended once, nothing appended twice.
async fn assert_each_acknowledged_once(topic: &str, acknowledged: &HashSet<String>) {
    let events = read_topic(&foldline_testkit::brokers(), topic).await;
    assert_gap_free(&events);
    let mut appended: HashMap<String, usize> = HashMap::new();
    for (event, _, _) in &events {
        if matches!(event.payload, Payload::StockAdjusted(_)) {
            *appended
                .entry(event.idempotency_key.clone().unwrap())
                .or_default() += 1;
        }
    }
    let doubled: Vec<_> = appended.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "appended twice: {doubled:?}");
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|k| !appended.contains_key(*k))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not in the log: {lost:?}");
}

/// Waits until `n` writes are acknowledged (panics when writes stall for 30 s).
async fn acknowledged_by(acknowledged: &std::sync::Mutex<HashSet<String>>, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < n {
        assert!(tokio::time::Instant::now() < deadline, "writes stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stopping instance (SIGTERM) gives its partitions up while its listener still answers,
/// and a joining one takes its share from the others: requests for the moving partitions
/// wait for their next owner (and are forwarded there), so clients that move on only from a
/// closed port get an answer to every request — no 503 — with nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_hand_over_answers_every_request() {
    let topic = foldline_testkit::unique("products");
    let (fleet_id, mut producers) = fleet(&topic).await;
    let urls: Vec<String> = producers.iter().map(|p| p.url.clone()).collect();
    let mut products = Vec::new();
    for n in 0..9 {
        let (status, body) = send(&urls[n % INSTANCES], "/products", None, create_body(0)).await;
        assert_eq!(status, 201, "{body}");
        products.push(body["id"].as_str().unwrap().to_owned());
    }

    let live = Arc::new(tokio::sync::RwLock::new(urls.clone()));
    let acknowledged = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let unavailable = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for (n, id) in products.iter().enumerate() {
        let (live, acknowledged, unavailable, stop, id, topic) = (
            live.clone(),
            acknowledged.clone(),
            unavailable.clone(),
            stop.clone(),
            id.clone(),
            topic.clone(),
        );
        writers.push(tokio::spawn(async move {
            let client = foldline_testkit::auth::client();
            let mut i = 0;
            while !stop.is_cancelled() {
                let key = format!("{topic}-{n}-{i}");
                let mut at = n + i;
                loop {
                    let urls = live.read().await.clone();
                    let url = &urls[at % urls.len()];
                    let sent = client
                        .post(format!("{url}/products/{id}/stock"))
                        .header("Idempotency-Key", &key)
                        .json(&json!({"delta": 1}))
                        .timeout(Duration::from_secs(20))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 200 => break,
                        Ok(r) => {
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            unavailable.lock().unwrap().push(format!("{status} {body}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        // A closed port (the stopped instance): the next instance.
                        Err(_) => at += 1,
                    }
                }
                acknowledged.lock().unwrap().insert(key);
                i += 1;
            }
        }));
    }
    acknowledged_by(&acknowledged, 50).await;

    // SIGTERM: the instance leaves the group first and answers until the others serve its
    // partitions; the clients keep sending to it until its port closes.
    let leaving = producers.remove(0);
    let left = tokio::task::spawn_blocking(move || {
        let mut leaving = leaving;
        leaving.terminate()
    })
    .await
    .unwrap();
    assert!(left, "the producer exits cleanly on SIGTERM");
    live.write().await.remove(0);
    wait_shared(&producers, 3, Duration::from_secs(60)).await;
    let before_join = acknowledged.lock().unwrap().len();
    acknowledged_by(&acknowledged, before_join + 30).await;

    // A new instance joins: the others hand it a share while they keep answering.
    let joining = instance(&topic, &fleet_id).await;
    live.write().await.push(joining.url.clone());
    producers.push(joining);
    wait_shared(&producers, 3, Duration::from_secs(60)).await;
    let after_join = acknowledged.lock().unwrap().len();
    acknowledged_by(&acknowledged, after_join + 30).await;
    stop.cancel();
    for writer in writers {
        writer.await.unwrap();
    }

    let unavailable = unavailable.lock().unwrap().clone();
    assert!(
        unavailable.is_empty(),
        "every request answered through the hand-overs, but {} were not: {:?}",
        unavailable.len(),
        &unavailable[..unavailable.len().min(5)]
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_each_acknowledged_once(&topic, &acknowledged).await;
}
