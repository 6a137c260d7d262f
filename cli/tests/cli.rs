//! The CLI against the real stack: consume decodes what the producer wrote, a DLQ replay
//! moves a fixed record back (once), a schema check rejects an incompatible change.

use std::process::Output;
use std::time::Duration;

use foldline_schemas::wire::EventCodec;
use foldline_schemas::{Envelope, Payload, ProductCreated};
use foldline_testkit::process::Spawned;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

fn foldline(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_foldline"))
        .args(args)
        .output()
        .expect("run foldline")
}

fn lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "foldline failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn consume_prints_what_the_producer_wrote_decoded_in_rpk_shape() {
    let topic = foldline_testkit::unique("products");
    let producer = Spawned::producer(&topic).await;
    let answer: Value = foldline_testkit::auth::client()
        .post(format!("{}/products", producer.url))
        .json(
            &serde_json::json!({"name": "Lamp", "price_cents": 100, "stock": 3, "seller_id": "s1"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["id"].as_str().unwrap();

    let records = lines(&foldline(&["topic", "consume", &topic]));
    // Stock 3 is below the threshold from the start: no warning, one event.
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    for field in [
        "topic",
        "key",
        "value",
        "timestamp",
        "partition",
        "offset",
        "headers",
    ] {
        assert!(record.get(field).is_some(), "{field} missing: {record}");
    }
    assert_eq!(record["topic"], topic.as_str());
    assert_eq!(record["key"], id);
    assert_eq!(record["value"]["event_type"], "ProductCreated");
    assert_eq!(record["value"]["payload"]["name"], "Lamp");
    assert_eq!(record["value"]["version"], 1);
    assert_eq!(
        format!("{}:{}", record["partition"], record["offset"]),
        answer["position"].as_str().unwrap()
    );
    let headers: Vec<&str> = record["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["key"].as_str().unwrap())
        .collect();
    assert!(
        headers.contains(&"event-type") && headers.contains(&"traceparent"),
        "{headers:?}"
    );

    // -n, --partition and --offset narrow it down.
    let partition = record["partition"].to_string();
    assert_eq!(
        lines(&foldline(&[
            "topic",
            "consume",
            &topic,
            "-n",
            "1",
            "--partition",
            &partition
        ]))
        .len(),
        1
    );
    let after = (record["offset"].as_i64().unwrap() + 1).to_string();
    assert!(lines(&foldline(&[
        "topic",
        "consume",
        &topic,
        "--partition",
        &partition,
        "--offset",
        &after
    ]))
    .is_empty());
    // A clear error for a broker that does not answer.
    let down = foldline(&["--brokers", "127.0.0.1:1", "topic", "describe", &topic]);
    assert!(!down.status.success());
}

#[tokio::test]
async fn dlq_replay_moves_a_fixed_record_back_once_and_keeps_garbage() {
    let brokers = foldline_testkit::brokers();
    let source = foldline_testkit::unique("products");
    let dlq = format!("{source}.dlq");
    foldline_service::kafka::ensure_topic(&brokers, &source, 3, &[])
        .await
        .unwrap();
    foldline_service::kafka::ensure_topic(&brokers, &dlq, 1, &[])
        .await
        .unwrap();
    // A record that decodes now (its schema is registered), and garbage.
    let codec = EventCodec::new(&foldline_testkit::registry_url(), &source).unwrap();
    let event = Envelope {
        actor: None,
        event_id: uuid::Uuid::new_v4(),
        product_id: "p-1".into(),
        version: 1,
        occurred_at: chrono::Utc::now(),
        correlation_id: "c".into(),
        idempotency_key: None,
        command_index: None,
        payload: Payload::ProductCreated(ProductCreated {
            name: "Back".into(),
            price_cents: 1,
            stock: 1,
            seller_id: "s".into(),
            low_stock_threshold: None,
        }),
    };
    let fixed = codec.encode(&event).await.unwrap();
    let producer: FutureProducer = foldline_service::kafka::producer_config(&brokers, "test")
        .create()
        .unwrap();
    for (key, value) in [("p-1", fixed.as_slice()), ("junk", b"garbage".as_slice())] {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dlq-reason",
                value: Some("test".as_bytes()),
            })
            .insert(Header {
                key: "dlq-source-topic",
                value: Some(source.as_bytes()),
            });
        producer
            .send(
                FutureRecord::to(&dlq)
                    .key(key)
                    .payload(value)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let listed = lines(&foldline(&["dlq", "list", "--topic", &dlq]));
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["source_topic"], source.as_str());

    let replayed = lines(&foldline(&["dlq", "replay", "--topic", &dlq]));
    let actions: Vec<&str> = replayed
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["re-published", "kept: still does not decode"]);
    let back = lines(&foldline(&["topic", "consume", &source]));
    assert_eq!(back.len(), 1);
    assert_eq!(back[0]["value"]["payload"]["name"], "Back");
    assert_eq!(back[0]["key"], "p-1");
    // Replayed once: a second run finds nothing new.
    assert!(lines(&foldline(&["dlq", "replay", "--topic", &dlq])).is_empty());
    assert_eq!(lines(&foldline(&["topic", "consume", &source])).len(), 1);
}

#[tokio::test]
async fn schema_check_rejects_an_incompatible_change() {
    let subject = format!("{}-value", foldline_testkit::unique("check"));
    let current = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/avro/products-value.avsc"
    );
    let registered = foldline(&["schema", "register", &subject, current]);
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    assert!(
        foldline(&["schema", "check", current, "--subject", &subject])
            .status
            .success()
    );

    let mut schema: Value =
        serde_json::from_str(&std::fs::read_to_string(current).unwrap()).unwrap();
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "tenant", "type": "string"}));
    let file = std::env::temp_dir().join(format!("{subject}.avsc"));
    std::fs::write(&file, schema.to_string()).unwrap();
    let checked = foldline(&[
        "schema",
        "check",
        file.to_str().unwrap(),
        "--subject",
        &subject,
    ]);
    assert_eq!(
        checked.status.code(),
        Some(1),
        "an incompatible schema must fail the check"
    );
    assert!(String::from_utf8_lossy(&checked.stderr).contains("NOT compatible"));
    let listed = lines(&foldline(&["schema", "list"]));
    assert!(listed.iter().any(|l| l["subject"] == subject.as_str()));
}
