//! A rebuild SIGKILLed in the middle of its bulk load (its `COPY` open) leaves the live model
//! serving, unchanged; the next rebuild drops the half-built schema it left and swaps in a
//! complete model.

mod common;

use std::time::Duration;

use common::Stack;
use foldline_schemas::wire::EventCodec;
use foldline_schemas::{Payload, ProductCreated, StockAdjusted};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{Connection, PgConnection};

const PRODUCTS: usize = 1_000;
const ADJUSTMENTS: i64 = 40;

/// Appends `PRODUCTS` products with `ADJUSTMENTS` stock changes each, as the write API would
/// (versions growing from 1), all sends in flight at once: a log long enough for the load to
/// take a while.
async fn write_long_log(topic: &str) {
    let codec = EventCodec::new(&foldline_testkit::registry_url(), topic).unwrap();
    let raw: FutureProducer =
        foldline_service::kafka::producer_config(&foldline_testkit::brokers(), "killed-rebuild")
            .create()
            .unwrap();
    let mut values = Vec::new();
    for p in 0..PRODUCTS {
        let id = format!("killed-{p:05}");
        let mut events = vec![common::raw_event(
            "raw-producer",
            &id,
            1,
            Payload::ProductCreated(ProductCreated {
                name: format!("Item {p}"),
                price_cents: 100,
                stock: 1_000,
                seller_id: format!("s{}", p % 7),
                low_stock_threshold: None,
            }),
        )];
        for v in 0..ADJUSTMENTS {
            events.push(common::raw_event(
                "raw-producer",
                &id,
                2 + v,
                Payload::StockAdjusted(StockAdjusted {
                    delta: -1,
                    new_stock: 999 - v,
                    reason: None,
                    previous_stock: 1_000 - v,
                }),
            ));
        }
        for event in events {
            values.push((id.clone(), codec.encode(&event).await.unwrap()));
        }
    }
    let sends = values.iter().map(|(key, value)| {
        raw.send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
    });
    for sent in futures::future::join_all(sends).await {
        sent.unwrap();
    }
}

/// Model schemas other than the active one.
async fn inactive_schemas(db: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'model\\_%'
         AND nspname <> (SELECT schema_name FROM foldline_meta.active_model) ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_rebuild_killed_mid_load_leaves_the_live_model_and_the_next_one_cleans_up() {
    let stack = Stack::start().await;
    let group = foldline_testkit::unique("g");
    let projector = stack.projector(&group).await;
    write_long_log(&stack.topic).await;
    let events = stack.topic_events().await;
    assert_eq!(events.len(), PRODUCTS * (1 + ADJUSTMENTS as usize));
    stack.wait_caught_up(events.len()).await;
    let mut db = PgConnection::connect(&stack.database_url).await.unwrap();
    let live: String = sqlx::query_scalar("SELECT schema_name FROM foldline_meta.active_model")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let (_, before) = stack.get("/products/killed-00042").await;

    // A rebuild, killed while its COPY into the new schema's history is open.
    let mut env = stack.projector_env(&group);
    env.push((
        "FOLDLINE_PROJECTOR_LISTEN",
        format!("127.0.0.1:{}", foldline_testkit::process::free_port()),
    ));
    let mut rebuild =
        tokio::process::Command::new(foldline_testkit::process::binary("foldline-projector"))
            .arg("replay")
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let copying: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE state = 'active' AND query LIKE 'COPY model\\_%product_events%')",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if copying {
            break;
        }
        assert!(
            rebuild.try_wait().unwrap().is_none(),
            "the rebuild ended before its load was seen"
        );
        assert!(tokio::time::Instant::now() < deadline, "no load seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rebuild.start_kill().unwrap();
    rebuild.wait().await.unwrap();

    let left = inactive_schemas(&mut db).await;
    assert_eq!(
        left.len(),
        1,
        "the half-built schema stays until the next rebuild: {left:?}"
    );
    let still: String = sqlx::query_scalar("SELECT schema_name FROM foldline_meta.active_model")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(still, live, "the live model is untouched");
    assert_eq!(stack.get("/products/killed-00042").await.1, before);

    // The next rebuild drops what the killed one left, then does the whole job.
    let output = stack.replay(&group, &["--json"], &[]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["left_over_dropped"], serde_json::json!(left));
    assert_eq!(report["events"], serde_json::json!(events.len()));
    assert!(
        inactive_schemas(&mut db).await.is_empty(),
        "neither the leftover nor the replaced model stays"
    );
    stack.assert_model_equals_fold(&events).await;
    drop(projector);
}
