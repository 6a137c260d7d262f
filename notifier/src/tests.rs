//! The notifier's routes over a feed fed by hand: no broker. Each test opens streams with
//! `oneshot` requests and reads their frames as a client would.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use foldline_schemas::{EventType, Payload, ProductCreated, StockAdjusted};
use foldline_service::position::Position;
use futures::StreamExt;
use tower::ServiceExt;

use super::*;
use crate::cursor::Cursor;
use crate::feed::Feed;
use crate::hub::{Backlog, BacklogHub};
use crate::live_event::LiveEvent;

const PARTITIONS: i32 = 2;

struct Given {
    feed: Feed,
    app: Router,
    deliveries: Arc<crate::sse::Deliveries>,
    offsets: [i64; PARTITIONS as usize],
}

/// A notifier whose feed has read `history` events (spread over two partitions) and follows
/// the log from there; `buffer` events a client may fall behind, `max_streams` streams.
fn given(history: usize, buffer: usize, max_streams: usize) -> Given {
    let feed = Feed::new(buffer, 200);
    let mut g = Given {
        app: Router::new(),
        deliveries: Arc::default(),
        feed: feed.clone(),
        offsets: [0; PARTITIONS as usize],
    };
    let recent: VecDeque<Arc<LiveEvent>> = (0..history).map(|n| g.next_event(n)).collect();
    let cursor: Cursor = (0..PARTITIONS)
        .map(|p| (p, g.offsets[p as usize]))
        .collect();
    let from: Cursor = (0..PARTITIONS).map(|p| (p, 0)).collect();
    feed.begin(cursor, recent, from);
    let log_ends: Cursor = (0..PARTITIONS)
        .map(|p| (p, g.offsets[p as usize] + LOG_AHEAD))
        .collect();
    let state = state(feed, max_streams, log_ends);
    g.deliveries = state.deliveries.clone();
    g.app = app(state, None, page());
    g
}

/// How far the log's end is past the feed's cursor in these tests.
const LOG_AHEAD: i64 = 2;

fn state(feed: Feed, max_streams: usize, log_ends: Cursor) -> Arc<AppState> {
    let codec = foldline_schemas::wire::EventCodec::new("http://127.0.0.1:9", "t").unwrap();
    let backlog = Arc::new(Backlog {
        brokers: "127.0.0.1:9".into(),
        topic: "t".into(),
        codec: Arc::new(codec),
    });
    Arc::new(AppState {
        feed,
        history: 200,
        streams: Arc::new(tokio::sync::Semaphore::new(max_streams)),
        hub: BacklogHub::start(backlog, 10),
        deliveries: Arc::default(),
        // The log ends 2 offsets past what the feed read (commit markers, events in flight).
        log_ends: Arc::new(move || {
            let ends = log_ends.clone();
            Box::pin(async move { Ok(ends) })
        }),
    })
}

fn page() -> PageConfig {
    PageConfig {
        query_url: "http://q".into(),
        low_stock_threshold: 5,
    }
}

impl Given {
    /// The `n`th event: product `p<n % 3>` on partition `n % 2`, a create then adjustments.
    fn next_event(&mut self, n: usize) -> Arc<LiveEvent> {
        let partition = (n % 2) as i32;
        let offset = self.offsets[partition as usize];
        self.offsets[partition as usize] += 1;
        let payload = if n < 3 {
            Payload::ProductCreated(ProductCreated {
                name: format!("p{n}"),
                price_cents: 1,
                stock: 10,
                seller_id: "s".into(),
                low_stock_threshold: None,
            })
        } else {
            Payload::StockAdjusted(StockAdjusted {
                delta: 1,
                new_stock: 11,
                reason: None,
                previous_stock: 10,
            })
        };
        let envelope = foldline_schemas::Envelope {
            event_id: uuid::Uuid::new_v4(),
            product_id: format!("p{}", n % 3),
            version: 1,
            occurred_at: chrono::Utc::now(),
            correlation_id: "c".into(),
            idempotency_key: Some("secret".into()),
            command_index: Some(0),
            payload,
            actor: Some("root".into()),
        };
        Arc::new(LiveEvent::new(envelope, Position { partition, offset }, n as i64).unwrap())
    }

    /// Publishes `count` more events, as the tail of the log would.
    fn publish(&mut self, count: usize, from: usize) {
        for n in from..from + count {
            let event = self.next_event(n);
            let position = Position {
                partition: event.partition,
                offset: event.offset,
            };
            self.feed.publish(position, Some(event));
        }
    }

    async fn get(&self, uri: &str, last_event_id: Option<&str>) -> axum::response::Response {
        let mut request = Request::get(uri);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        self.app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }
}

/// One SSE message: its `id:`, `event:` and `data:` (comments and `retry:` left out).
#[derive(Debug, Default, Clone)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Reads the frames of an SSE body until `count` messages arrived (or 2 s passed).
async fn frames(response: axum::response::Response, count: usize) -> Vec<Frame> {
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    let mut got: Vec<Frame> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while got.len() < count {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            _ => break,
        };
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut frame = Frame::default();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    frame.id = Some(v.into());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    frame.event = Some(v.into());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    frame.data.push_str(v);
                }
            }
            if frame.event.is_some() {
                got.push(frame);
            }
        }
    }
    got
}

#[tokio::test]
async fn given_a_feed_not_caught_up_when_a_stream_opens_then_503_with_retry_after() {
    let feed = Feed::new(16, 16);
    let app = app(state(feed, 10, Cursor::new()), None, page());
    let response = app
        .oneshot(Request::get("/events/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
}

#[tokio::test]
async fn given_history_when_recent_is_asked_then_the_last_events_and_the_cursor_after_them() {
    let g = given(5, 64, 10);
    let response = g.get("/events/recent?limit=3", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let events = json["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(json["cursor"], "0:3,1:2");
    assert!(events.iter().all(|e| e.get("idempotency_key").is_none()));
    let too_many = g.get("/events/recent?limit=201", None).await;
    assert_eq!(too_many.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn given_a_live_stream_when_events_arrive_then_each_once_with_a_cursor_id() {
    let mut g = given(2, 64, 10);
    let response = g.get("/events/stream", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    g.publish(4, 2);
    let got = frames(response, 4).await;
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].event.as_deref(), Some("ProductCreated"));
    assert_eq!(
        got[3].id.as_deref(),
        Some("0:3,1:3"),
        "the cursor after the 4th event"
    );
    assert!(got.iter().all(|f| !f.data.contains("secret")));
}

#[tokio::test]
async fn given_filters_when_events_arrive_then_only_matching_ones() {
    let mut g = given(0, 64, 10);
    let by_type = g.get("/events/stream?type=StockAdjusted", None).await;
    let by_product = g.get("/events/stream?product_id=p1", None).await;
    g.publish(9, 0);
    let typed = frames(by_type, 6).await;
    assert_eq!(typed.len(), 6);
    assert!(typed
        .iter()
        .all(|f| f.event.as_deref() == Some("StockAdjusted")));
    let product = frames(by_product, 3).await;
    assert_eq!(product.len(), 3);
    assert!(product
        .iter()
        .all(|f| f.data.contains("\"product_id\":\"p1\"")));
}

#[tokio::test]
async fn given_clients_in_step_when_events_arrive_then_each_gets_the_feeds_one_frame() {
    let mut g = given(2, 64, 10);
    let first = g.get("/events/stream", None).await;
    let second = g.get("/events/stream", None).await;
    g.publish(5, 2);
    let (a, b) = (frames(first, 5).await, frames(second, 5).await);
    assert_eq!(a.len(), 5);
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "the same frames");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        g.deliveries.shared.load(Relaxed),
        10,
        "every frame the feed's"
    );
    assert_eq!(g.deliveries.own.load(Relaxed), 0, "none made per client");
    // The frame is the very bytes the feed made: the same allocation for both clients.
    let (_, recent) = g.feed.recent(1, |_| true);
    let shared = recent[0]
        .shared
        .get()
        .expect("published events carry their frame");
    assert_eq!(shared.after.to_string(), a[4].id.clone().unwrap());
}

#[tokio::test]
async fn given_clients_with_the_same_filter_then_one_channel_filters_for_all() {
    let mut g = given(0, 64, 10);
    let same: Vec<_> = futures::future::join_all(
        (0..3).map(|_| g.get("/events/stream?product_id=p1&type=StockAdjusted", None)),
    )
    .await;
    let reordered = g
        .get("/events/stream?type=StockAdjusted&product_id=p1", None)
        .await;
    let other = g.get("/events/stream?product_id=p2", None).await;
    let all = g.get("/events/stream", None).await;
    assert_eq!(g.feed.filter_channels(), 2, "one per distinct filter");
    assert_eq!(g.feed.clients(), 6);
    g.publish(12, 0);
    // p1's adjustments are events 4, 7 and 10.
    for response in same.into_iter().chain([reordered]) {
        let got = frames(response, 3).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got.iter().all(|f| f.data.contains("\"product_id\":\"p1\"")
            && f.event.as_deref() == Some("StockAdjusted")));
    }
    assert_eq!(frames(other, 4).await.len(), 4);
    assert_eq!(frames(all, 12).await.len(), 12);
    // Every client gone: the next event drops the filters' channels.
    g.publish(1, 12);
    assert_eq!(g.feed.filter_channels(), 0);
}

#[tokio::test]
async fn given_filtered_streams_that_come_and_go_without_events_then_their_channels_do_not_pile_up()
{
    let g = given(0, 64, 10);
    let kept = g.get("/events/stream?product_id=kept", None).await;
    for n in 0..500 {
        let response = g
            .get(&format!("/events/stream?product_id=gone-{n}"), None)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let channels = g.feed.filter_channels();
    assert!(
        channels <= 64,
        "{channels} channels left by 500 closed streams"
    );
    assert_eq!(g.feed.clients(), 1);
    drop(kept);
}

#[tokio::test]
async fn given_a_client_behind_when_it_reads_then_what_the_feed_holds_comes_in_one_write() {
    let mut g = given(0, 64, 10);
    let response = g.get("/events/stream", None).await;
    let mut body = response.into_body().into_data_stream();
    let connected = body.next().await.unwrap().unwrap();
    assert!(connected.starts_with(b": connected"));
    g.publish(10, 0);
    let chunk = body.next().await.unwrap().unwrap();
    let text = std::str::from_utf8(&chunk).unwrap();
    assert_eq!(
        text.matches("\n\n").count(),
        10,
        "ten frames in one chunk: {text}"
    );
    assert!(text.contains("id: 0:5,1:5\n"), "{text}");
}

#[tokio::test]
async fn given_a_slow_client_then_the_others_still_get_every_event() {
    let mut g = given(0, 4, 10);
    let slow = g.get("/events/stream", None).await;
    let fast = g.get("/events/stream", None).await;
    let reader = tokio::spawn(frames(fast, 10));
    for n in 0..10 {
        g.publish(1, n);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = reader.await.unwrap();
    assert_eq!(got.len(), 10, "the reading client got every event");
    assert!(got.iter().all(|f| f.event.as_deref() != Some("reconnect")));
    let slow = frames(slow, 11).await;
    assert_eq!(slow.last().unwrap().event.as_deref(), Some("reconnect"));
}

#[tokio::test]
async fn given_a_cursor_from_memory_when_resuming_then_only_what_was_missed_then_live() {
    let mut g = given(6, 64, 10);
    // Seen offsets 0 and 1 of each partition (the cursor holds the next offsets): missed
    // offset 2 of each, from memory, then two live events.
    let response = g.get("/events/stream", Some("0:2,1:2")).await;
    g.publish(2, 6);
    let got = frames(response, 4).await;
    let ids: Vec<&str> = got.iter().filter_map(|f| f.id.as_deref()).collect();
    assert_eq!(ids, vec!["0:3,1:2", "0:3,1:3", "0:4,1:3", "0:4,1:4"]);
    // What it missed was made for it; once live it is in step and gets the feed's frames.
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(g.deliveries.own.load(Relaxed), 2);
    assert_eq!(g.deliveries.shared.load(Relaxed), 2);
}

#[tokio::test]
async fn given_a_bad_cursor_then_400() {
    let g = given(1, 64, 10);
    for bad in ["nonsense", "0:1,7:3", "0:-5"] {
        let response = g.get("/events/stream", Some(bad)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn given_a_cursor_past_a_partitions_end_then_400_naming_the_end() {
    let g = given(1, 64, 10);
    let end = g.offsets[0] + LOG_AHEAD;
    for past in [format!("0:{}", end + 1), format!("0:{}", i64::MAX)] {
        let response = g.get("/events/stream", Some(&past)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{past}");
        let body: serde_json::Value = serde_json::from_slice(
            &axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap(),
        )
        .unwrap();
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("0:{end}")),
            "names the end: {detail}"
        );
    }
    // At the log's end, though past what the feed has read: the feed only lags.
    let at_end = g.get("/events/stream", Some(&format!("0:{end}"))).await;
    assert_eq!(at_end.status(), StatusCode::OK);
}

#[tokio::test]
async fn given_the_stream_cap_when_one_more_opens_then_503_and_a_closed_stream_frees_its_place() {
    let g = given(0, 64, 1);
    let first = g.get("/events/stream", None).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = g.get("/events/stream", None).await;
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(first);
    let third = g.get("/events/stream", None).await;
    assert_eq!(third.status(), StatusCode::OK);
}

#[tokio::test]
async fn given_a_slow_client_when_cut_off_then_it_resumes_from_memory_with_no_gap() {
    let mut g = given(0, 4, 10);
    let slow = g.get("/events/stream", None).await;
    // Ten events while the client reads nothing: more than the 4 it may fall behind.
    g.publish(10, 0);
    let got = frames(slow, 11).await;
    let last = got.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("reconnect"), "{got:?}");
    let cursor = last.id.clone().unwrap();
    let delivered = got.len() - 1;
    let resumed = g.get("/events/stream", Some(&cursor)).await;
    let rest = frames(resumed, 10 - delivered).await;
    assert_eq!(delivered + rest.len(), 10, "every event exactly once");
    assert_eq!(rest.last().unwrap().id.as_deref(), Some("0:5,1:5"));
}

#[test]
fn the_live_page_knows_every_event_type() {
    let page = include_str!("page.html");
    let listed = page
        .lines()
        .find(|l| l.starts_with("const TYPES = "))
        .expect("the page lists the event types");
    for event_type in EventType::ALL {
        assert!(
            listed.contains(&format!("\"{event_type}\"")),
            "the live page's TYPES lacks {event_type}"
        );
    }
}
