//! The notifier's bounds (issue 25): a cap on streams (503 with `Retry-After` past it), cursors
//! that do not fit the topic refused (400), resuming clients served from memory (many at once,
//! no reader each), older cursors served by one shared reader, and no idempotency key on a
//! public stream.

use std::time::Duration;

use foldline_testkit::process::Spawned;
use futures::StreamExt;
use serde_json::{json, Value};

async fn notifier(topic: &str, env: &[(&str, &str)]) -> Spawned {
    let mut all = vec![("FOLDLINE_TOPIC", topic.to_owned())];
    all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    Spawned::start("foldline-notifier", "FOLDLINE_NOTIFIER_LISTEN", &all).await
}

async fn create(producer: &Spawned, n: usize, key: Option<&str>) {
    let commands: Vec<Value> = (0..n)
        .map(|i| json!({"op": "create", "name": format!("p{i}"), "price_cents": 1, "stock": 1, "seller_id": "s"}))
        .collect();
    let mut request = foldline_testkit::auth::client()
        .post(format!("{}/commands", producer.url))
        .json(&json!({ "commands": commands }));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
}

/// Opens a stream; its status, `Retry-After`, and the response to read on.
async fn open(url: &str, last_event_id: Option<&str>) -> (u16, Option<String>, reqwest::Response) {
    let mut request = reqwest::Client::new().get(format!("{url}/events/stream"));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), retry, response)
}

/// `data:` lines of the stream until `count` arrived or 20 s passed.
async fn datas(response: reqwest::Response, count: usize) -> Vec<Value> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < count {
        let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await else {
            break;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            if let Some(data) = line.strip_prefix("data:") {
                out.push(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn streams_past_the_cap_are_refused_until_one_closes() {
    let topic = foldline_testkit::unique("products");
    let _producer = Spawned::producer(&topic).await;
    let notifier = notifier(&topic, &[("FOLDLINE_SSE_MAX_STREAMS", "2")]).await;
    let (a, _, first) = open(&notifier.url, None).await;
    let (b, _, _second) = open(&notifier.url, None).await;
    assert_eq!((a, b), (200, 200));
    let (refused, retry, _) = open(&notifier.url, None).await;
    assert_eq!(refused, 503);
    assert!(retry.is_some(), "503 carries Retry-After");
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _third) = open(&notifier.url, None).await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed stream frees its place"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cursors_that_do_not_fit_the_topic_are_refused() {
    let topic = foldline_testkit::unique("products");
    let producer = Spawned::producer(&topic).await;
    create(&producer, 3, None).await;
    let notifier = notifier(&topic, &[]).await;
    let many: Vec<String> = (0..5000).map(|p| format!("{p}:1")).collect();
    for cursor in [
        "0:1,1:1,2:1,3:1",
        "0:-5",
        "garbage",
        many.join(",").as_str(),
    ] {
        let (status, _, response) = open(&notifier.url, Some(cursor)).await;
        assert_eq!(
            status,
            400,
            "{cursor:.40}: {}",
            response.text().await.unwrap()
        );
    }
    let (status, _, _) = open(&notifier.url, Some("0:0,1:0,2:0")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn many_resuming_clients_are_served_from_memory_and_old_cursors_by_few_readers() {
    let topic = foldline_testkit::unique("products");
    let producer = Spawned::producer(&topic).await;
    create(&producer, 30, Some("secret-key-1")).await;
    // Memory holds 10 events: a cursor from the start is older than that.
    let notifier = notifier(
        &topic,
        &[
            ("FOLDLINE_SSE_BUFFER", "10"),
            ("FOLDLINE_LIVE_HISTORY", "10"),
            ("FOLDLINE_SSE_MAX_BACKLOG_CLIENTS", "100"),
        ],
    )
    .await;
    let recent: Value = reqwest::get(format!("{}/events/recent?limit=10", notifier.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = recent["events"].as_array().unwrap();
    assert_eq!(events.len(), 10);
    assert!(
        events.iter().all(|e| e.get("idempotency_key").is_none()),
        "no key on public reads"
    );
    // A cursor just before the last of them (its own event's cursor is not known here, so
    // resume from the live cursor and write one event more).
    let cursor = recent["cursor"].as_str().unwrap().to_owned();
    let mut resumed = Vec::new();
    for _ in 0..200 {
        let (status, _, response) = open(&notifier.url, Some(&cursor)).await;
        assert_eq!(status, 200, "resuming from memory needs no reader");
        resumed.push(response);
    }
    // Fifty clients from the very start, older than memory: one shared reader serves them all.
    let start = "0:0,1:0,2:0";
    // They arrive together, as browsers do after a notifier restart.
    let opened = futures::future::join_all((0..50).map(|_| open(&notifier.url, Some(start)))).await;
    let mut old = Vec::new();
    for (status, _, response) in opened {
        assert_eq!(status, 200);
        old.push(response);
    }
    let all = futures::future::join_all(old.into_iter().map(|r| datas(r, 30))).await;
    assert!(
        all.iter().all(|d| d.len() == 30),
        "each gets every event from the start"
    );
    for events in &all {
        let ids: std::collections::HashSet<&str> = events
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 30, "no duplicate");
    }
    // The counter is published once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let passes = notifier.metric("sse_backlog_passes_total").await;
    assert!(
        (1.0..=3.0).contains(&passes),
        "{passes} reads of the log for 50 clients"
    );
    create(&producer, 1, None).await;
    // Every resumed client gets the new event, once.
    let received = futures::future::join_all(resumed.into_iter().map(|r| datas(r, 1))).await;
    assert!(
        received.iter().all(|d| d.len() == 1),
        "every resumed client got the new event"
    );
}
