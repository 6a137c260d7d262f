//! The notifier on the real stack: resume without gap or duplicate across partitions, filters,
//! many clients, and a client that stops reading.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use foldline_testkit::process::Spawned;
use futures::StreamExt;
use serde_json::{json, Value};

struct Stack {
    topic: String,
    producer: Spawned,
    notifier: Spawned,
}

async fn stack(buffer: usize) -> Stack {
    let topic = foldline_testkit::unique("products");
    let producer = Spawned::producer(&topic).await;
    let notifier = Spawned::start(
        "foldline-notifier",
        "FOLDLINE_NOTIFIER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", topic.clone()),
            ("FOLDLINE_SSE_BUFFER", buffer.to_string()),
        ],
    )
    .await;
    Stack {
        topic,
        producer,
        notifier,
    }
}

impl Stack {
    /// Creates `n` products in one batch (they spread over the partitions); returns their ids.
    /// Broker trouble (503) is retried with the same Idempotency-Key.
    async fn create(&self, n: usize, stock: i64) -> Vec<String> {
        let commands: Vec<Value> = (0..n)
            .map(|i| json!({"op": "create", "name": format!("p{i}"), "price_cents": 1, "stock": stock, "seller_id": "s"}))
            .collect();
        let answer =
            foldline_testkit::writes::post_commands(&http(), &self.producer.url, &commands).await;
        answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// One client for the whole test: building one loads the TLS roots, which for a thousand
/// clients would take longer than the test.
fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(foldline_testkit::auth::client).clone()
}

#[derive(Debug, Clone)]
struct Message {
    id: Option<String>,
    event: String,
    data: Value,
}

/// Reads SSE messages (comments and retry-only frames skipped) until `count` arrived or
/// `limit` passed.
async fn read(
    url: &str,
    last_event_id: Option<&str>,
    count: usize,
    limit: Duration,
) -> Vec<Message> {
    let mut request = http().get(url);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while messages.len() < count {
        let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, body.next()).await else {
            break;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        // A chunk may hold several frames (the notifier batches them for a client that is
        // behind): take only as many as asked for, as a client leaving after `count` would.
        while let Some(end) = buffer.find("\n\n").filter(|_| messages.len() < count) {
            let frame: String = buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, None, None);
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned())
                }
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned())
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data = Some(v.trim().to_owned())
                }
            }
            if let (Some(event), Some(data)) = (event, data) {
                messages.push(Message {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
        }
    }
    messages
}

fn positions(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.data["position"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_client_resumes_on_another_instance_after_a_disconnect_without_gap_or_duplicate() {
    let stack = stack(4096).await;
    let url = format!("{}/events/stream", stack.notifier.url);
    let first = tokio::spawn({
        let url = url.clone();
        async move { read(&url, None, 6, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.create(12, 10).await;
    let first = first.await.unwrap();
    assert_eq!(first.len(), 6, "got {first:?}");
    let last = first.last().unwrap().id.clone().unwrap();
    // While away: more events, some read back from the broker on resume — and the client
    // comes back through another notifier instance (as behind a load balancer).
    stack.create(9, 10).await;
    let other = Spawned::start(
        "foldline-notifier",
        "FOLDLINE_NOTIFIER_LISTEN",
        &[("FOLDLINE_TOPIC", stack.topic.clone())],
    )
    .await;
    let resumed = read(
        &format!("{}/events/stream", other.url),
        Some(&last),
        15,
        Duration::from_secs(30),
    )
    .await;

    let mut seen = positions(&first);
    seen.extend(positions(&resumed));
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no duplicate: {seen:?}");
    assert_eq!(
        seen.len(),
        21,
        "no gap: 21 events written, {} received",
        seen.len()
    );
    let partitions: std::collections::HashSet<&str> =
        seen.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert!(partitions.len() > 1, "the events span several partitions");
    assert!(first
        .iter()
        .all(|m| m.event == "ProductCreated" && m.id.is_some()));
    // A bad Last-Event-ID is refused clearly.
    let bad = reqwest::Client::new()
        .get(&url)
        .header("last-event-id", "zero")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn filters_by_type_and_product() {
    let stack = stack(4096).await;
    let url = format!("{}/events/stream", stack.notifier.url);
    let ids = stack.create(2, 6).await;
    let low = tokio::spawn({
        let url = format!("{url}?type=LowStockWarning");
        async move { read(&url, None, 1, Duration::from_secs(30)).await }
    });
    let one = tokio::spawn({
        let url = format!("{url}?product_id={}", ids[1]);
        async move {
            // The creation may still be on its way through the live feed; read up to the warning.
            let mut got = read(&url, None, 3, Duration::from_secs(15)).await;
            got.retain(|m| m.event != "ProductCreated");
            got
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = http();
    for id in &ids {
        // 6 → 4 crosses the threshold (5): StockAdjusted + LowStockWarning for each product.
        client
            .post(format!("{}/products/{id}/stock", stack.producer.url))
            .json(&json!({"delta": -2}))
            .send()
            .await
            .unwrap();
    }
    let low = low.await.unwrap();
    assert_eq!(low.len(), 1);
    assert_eq!(low[0].event, "LowStockWarning");
    let one = one.await.unwrap();
    assert_eq!(
        one.iter().map(|m| m.event.as_str()).collect::<Vec<_>>(),
        ["StockAdjusted", "LowStockWarning"]
    );
    assert!(one.iter().all(|m| m.data["product_id"] == ids[1].as_str()));
    let _ = &stack.topic;
}

#[tokio::test]
async fn a_thousand_clients_all_receive_every_event() {
    let stack = stack(4096).await;
    let url = format!("{}/events/stream", stack.notifier.url);
    let clients: Vec<_> = (0..1000)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { read(&url, None, 5, Duration::from_secs(60)).await })
        })
        .collect();
    // Wait until they are all connected.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = reqwest::get(format!("{}/metrics", stack.notifier.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let connected = metrics
            .lines()
            .find(|l| l.starts_with("sse_clients "))
            .unwrap_or("")
            .to_owned();
        if connected == "sse_clients 1000" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients did not all connect: {connected}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ids = stack.create(5, 10).await;
    for client in clients {
        let got = client.await.unwrap();
        let mut products: Vec<String> = got
            .iter()
            .map(|m| m.data["product_id"].as_str().unwrap().to_owned())
            .collect();
        products.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(products, expected);
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_delays_no_one_and_is_told_to_reconnect() {
    // Enough events to fill the stalled connection's socket buffers many times over, so the
    // server can no longer write to it and it falls behind the 256-event buffer (bursts of
    // 100, so a client that reads keeps up).
    const BATCHES: usize = 100;
    const PER_BATCH: usize = 100;
    let stack = stack(256).await;
    let url = format!("{}/events/stream", stack.notifier.url);
    // The stalled client: connects with a small receive buffer (so the kernel cannot absorb
    // the backlog for it, whatever its autotuning), sends the request, reads nothing for a
    // while.
    let address: std::net::SocketAddr = stack
        .notifier
        .url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(address).await.unwrap();
    stalled
        .write_all(
            format!("GET /events/stream HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let reader = tokio::spawn({
        let url = url.clone();
        async move { read(&url, None, BATCHES * PER_BATCH, Duration::from_secs(120)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..BATCHES {
        stack.create(PER_BATCH, 10).await;
    }
    let others = reader.await.unwrap();
    assert_eq!(
        others.len(),
        BATCHES * PER_BATCH,
        "a reading client got everything despite the stalled one"
    );
    assert!(others.iter().all(|m| m.event == "ProductCreated"));
    // When the stalled client reads at last, its stream ends with the reconnect event.
    let mut text = String::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(
        text.contains("event: reconnect"),
        "the stalled client is told to reconnect"
    );
    assert!(text.contains("last_event_id"));
}

/// A schema registry of the test's own, on a fixed port so it can come back at the same URL.
async fn own_registry(port: u16) -> Spawned {
    let registry = Spawned::spawn(
        "foldline-schema-registry",
        &[],
        &[("FOLDLINE_REGISTRY_LISTEN", format!("127.0.0.1:{port}"))],
        port,
    );
    registry.wait_ready(Duration::from_secs(60)).await;
    registry
}

#[tokio::test]
async fn events_written_while_the_registry_is_down_reach_clients_once_it_is_back() {
    // The notifier decodes through a registry that goes away before it has decoded anything
    // (so no schema is cached); the producer keeps writing through the stack's registry.
    let stack = stack(4096).await;
    let port = foldline_testkit::process::free_port();
    let mut registry = own_registry(port).await;
    let notifier = Spawned::start(
        "foldline-notifier",
        "FOLDLINE_NOTIFIER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", stack.topic.clone()),
            ("FOLDLINE_REGISTRY_URL", format!("http://127.0.0.1:{port}")),
        ],
    )
    .await;
    registry.kill();
    let reader = tokio::spawn({
        let url = format!("{}/events/stream", notifier.url);
        async move { read(&url, None, 3, Duration::from_secs(60)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids = stack.create(2, 10).await;
    // Long enough for the notifier to try (and, before the fix, give up on) both events.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _registry = own_registry(port).await;
    ids.extend(stack.create(1, 10).await);

    let got = reader.await.unwrap();
    let mut received: Vec<&str> = got
        .iter()
        .map(|m| m.data["product_id"].as_str().unwrap())
        .collect();
    // Each once; the first two may sit on different partitions (no order between them).
    received.sort_unstable();
    ids.sort_unstable();
    assert_eq!(received, ids, "every event exactly once");
}

#[tokio::test]
async fn a_notifier_started_on_a_grown_log_serves_new_clients_from_its_end() {
    let stack = stack(4096).await;
    stack.create(300, 10).await;
    // A second notifier starts on the log as it is now (it finds the end by a watermark query;
    // how long that takes on a 1M-event log is in `scripts/bench soak`), and a new client
    // gets exactly what is written afterwards: nothing older, nothing missed.
    let other = Spawned::start(
        "foldline-notifier",
        "FOLDLINE_NOTIFIER_LISTEN",
        &[("FOLDLINE_TOPIC", stack.topic.clone())],
    )
    .await;
    let url = format!("{}/events/stream", other.url);
    let fresh = tokio::spawn(async move { read(&url, None, 5, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = stack.create(3, 10).await;
    let fresh = fresh.await.unwrap();
    let got: Vec<&str> = fresh
        .iter()
        .map(|m| m.data["product_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got.len(),
        3,
        "only the 3 new events, none of the 300 before: {got:?}"
    );
    for id in &ids {
        assert!(got.contains(&id.as_str()), "{id} missing from {got:?}");
    }
}

#[tokio::test]
async fn recent_events_on_a_grown_log_then_the_stream_from_their_cursor_has_no_gap_and_no_duplicate(
) {
    let stack = stack(4096).await;
    let older = stack.create(500, 10).await;
    // A notifier started on that log keeps its last events (read back from a bounded stretch of
    // each partition, not the whole log) and hands them out with the cursor after them.
    let other = Spawned::start(
        "foldline-notifier",
        "FOLDLINE_NOTIFIER_LISTEN",
        &[
            ("FOLDLINE_TOPIC", stack.topic.clone()),
            ("FOLDLINE_LIVE_HISTORY", "40".into()),
        ],
    )
    .await;
    let recent: Value =
        foldline_testkit::get_json(&http(), &format!("{}/events/recent?limit=40", other.url)).await;
    let events = recent["events"].as_array().unwrap();
    assert_eq!(events.len(), 40, "the last 40 of 500");
    let history: Vec<&str> = events
        .iter()
        .map(|e| e["product_id"].as_str().unwrap())
        .collect();
    for id in &history {
        assert!(older.contains(&id.to_string()), "{id} was never written");
    }
    let unique: std::collections::HashSet<_> = history.iter().collect();
    assert_eq!(unique.len(), 40, "no event twice in the history");
    let cursor = recent["cursor"].as_str().unwrap().to_owned();
    assert!(!cursor.is_empty());

    // Written after the history was taken: a stream opened at its cursor gets exactly these.
    let newer = stack.create(5, 10).await;
    let url = format!("{}/events/stream", other.url);
    let continued = read(&url, Some(&cursor), 5, Duration::from_secs(10)).await;
    let mut got: Vec<String> = continued
        .iter()
        .map(|m| m.data["product_id"].as_str().unwrap().to_owned())
        .collect();
    got.sort_unstable();
    let mut want = newer.clone();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "the 5 new events, once each, none of the history"
    );

    // The history now ends with the new events, and filters by product.
    let after: Value = foldline_testkit::get_json(
        &http(),
        &format!(
            "{}/events/recent?limit=5&product_id={}",
            other.url, newer[0]
        ),
    )
    .await;
    let only: Vec<&str> = after["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["product_id"].as_str().unwrap())
        .collect();
    assert_eq!(only, vec![newer[0].as_str()]);

    // More than the notifier keeps is a clear 400, not a silent short answer.
    let too_many = http()
        .get(format!("{}/events/recent?limit=41", other.url))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 400);
    let problem: Value = too_many.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("at most 40"));
}
