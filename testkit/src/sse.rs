//! An SSE client that behaves like a browser's EventSource: when the stream ends or the
//! connection fails it reconnects with `Last-Event-ID` (the last `id:` it received), for as long
//! as it runs. It keeps every event it received, so a test can check "each exactly once".

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: serde_json::Value,
}

#[derive(Debug, Default)]
pub struct FollowReport {
    pub events: Vec<SseEvent>,
    /// Connections opened (the first one included).
    pub connections: usize,
}

/// Follows `url` until `stop` turns true, reconnecting with `Last-Event-ID` after any break.
pub async fn follow(url: String, mut stop: watch::Receiver<bool>) -> FollowReport {
    let client = reqwest::Client::new();
    let mut report = FollowReport::default();
    let mut last_id: Option<String> = None;
    while !*stop.borrow() {
        let mut request = client.get(&url);
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let response = tokio::select! {
            r = request.send() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok(response) = response.and_then(|r| r.error_for_status()) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        report.connections += 1;
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        loop {
            let chunk = tokio::select! {
                c = body.next() => c,
                _ = stop.wait_for(|s| *s) => return report,
            };
            let Some(Ok(chunk)) = chunk else { break };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&frame) {
                    if event.event == "reconnect" {
                        continue;
                    }
                    if event.id.is_some() {
                        last_id.clone_from(&event.id);
                    }
                    report.events.push(event);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report
}

/// One SSE frame; `None` for comments and frames without an event and data.
fn parse(frame: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data) = (None, None, None);
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data = Some(v.trim().to_owned());
        }
    }
    Some(SseEvent {
        id,
        event: event?,
        data: serde_json::from_str(&data?).ok()?,
    })
}
