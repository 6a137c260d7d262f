//! Rebuilding the read model from the S3 archive followed by the topic gives the same model as
//! rebuilding from the topic alone — and the archive alone brings back history that the topic
//! no longer holds.

mod common;

use std::time::Duration;

use common::Stack;
use foldline_testkit::process::Spawned;
use foldline_testkit::s3::own_s3;

async fn replay(stack: &Stack, args: &[&str], env: &[(&str, String)]) -> String {
    let output = stack.replay("g1", args, env).await;
    assert!(
        output.status.success(),
        "replay {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_rebuild_from_archive_and_topic_equals_the_rebuild_from_the_topic() {
    let stack = Stack::start().await;
    let s3 = own_s3();
    let archive_env = vec![
        ("FOLDLINE_S3_ENDPOINT", s3.url()),
        (
            "FOLDLINE_ARCHIVE_BUCKET",
            foldline_testkit::unique("archive"),
        ),
    ];
    let mut archiver_env = archive_env.clone();
    archiver_env.extend([
        ("FOLDLINE_TOPIC", stack.topic.clone()),
        ("FOLDLINE_DLQ_TOPIC", stack.dlq.clone()),
        (
            "FOLDLINE_ARCHIVER_GROUP",
            format!("{}-archiver", stack.topic),
        ),
        ("FOLDLINE_ARCHIVE_FILE_RECORDS", "20".into()),
        ("FOLDLINE_ARCHIVE_FILE_SECONDS", "1".into()),
    ]);
    let mut archiver = Spawned::start(
        "foldline-archiver",
        "FOLDLINE_ARCHIVER_LISTEN",
        &archiver_env,
    )
    .await;
    stack.mixed_load(20, 40, 11).await;
    let archived = stack.topic_events().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while archiver.metric("archive_records_total").await < archived.len() as f64 {
        assert!(tokio::time::Instant::now() < deadline, "archive incomplete");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(archiver.terminate(), "graceful shutdown");

    // History after the archive's end is only in the topic.
    stack.mixed_load(5, 20, 12).await;
    let events = stack.topic_events().await;
    assert!(events.len() > archived.len());

    let printed = replay(&stack, &[], &[]).await;
    assert!(
        printed.contains(&format!("replayed {} events", events.len())),
        "{printed}"
    );
    stack.assert_model_equals_fold(&events).await;

    let printed = replay(&stack, &["--from-archive"], &archive_env).await;
    assert!(
        printed.contains(&format!("replayed {} events", events.len())),
        "{printed}"
    );
    assert!(printed.contains("bulk load: read and folded"), "{printed}");
    stack.assert_model_equals_fold(&events).await;

    // Retention takes the oldest half of what the archive holds (DeleteRecords moves each
    // partition's log start): the topic alone no longer folds into the model, the archive
    // then the topic still does, for a rebuild and for verify.
    let lost = lose_oldest_half(&stack.topic, &format!("{}-archiver", stack.topic)).await;
    assert!(lost > 0, "retention took records");
    let printed = replay(&stack, &["--from-archive"], &archive_env).await;
    assert!(
        printed.contains(&format!("replayed {} events", events.len())),
        "{printed}"
    );
    stack.assert_model_equals_fold(&events).await;
    let verify_env: Vec<(&str, &str)> = archive_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, printed) =
        stack.verify("g1", &["--only", "postgres", "--from-archive"], &verify_env);
    assert_eq!(code, Some(0), "{printed}");
    let (code, printed) = stack.verify("g1", &["--only", "postgres"], &verify_env);
    assert_eq!(
        code,
        Some(1),
        "the topic alone lost {lost} events: {printed}"
    );

    // A topic that no longer holds any of it (an empty one stands for expired retention):
    // the archive alone brings the archived history back.
    let empty = foldline_testkit::unique("expired");
    foldline_service::kafka::ensure_topic(&foldline_testkit::brokers(), &empty, 3, &[])
        .await
        .unwrap();
    let mut env = archive_env.clone();
    env.push(("FOLDLINE_TOPIC", empty.clone()));
    let printed = replay(&stack, &["--from-archive"], &env).await;
    assert!(
        printed.contains(&format!("replayed {} events", archived.len())),
        "want {}: {printed}",
        archived.len()
    );
    stack.assert_model_equals_fold(&archived).await;
    // And every product's history with it: what the topic lost is still answered.
    stack.assert_histories_equal(&archived).await;

    // `foldline verify` on the same reader checks that model against the archive; reading
    // the topic alone it cannot, and says the model holds events the log does not.
    let verify_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, printed) =
        stack.verify("g1", &["--only", "postgres", "--from-archive"], &verify_env);
    assert_eq!(code, Some(0), "{printed}");
    assert!(
        printed.contains(&format!(
            "read model: {} events before its cut",
            archived.len()
        )),
        "{printed}"
    );
    let (code, printed) = stack.verify("g1", &["--only", "postgres"], &verify_env);
    assert_eq!(
        code,
        Some(1),
        "the topic alone lacks the archived events: {printed}"
    );
}

/// Deletes, on each partition of `topic`, the records before the middle of what the archiver
/// (group `archiver_group`) has archived of it; returns how many.
async fn lose_oldest_half(topic: &str, archiver_group: &str) -> i64 {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let brokers = foldline_testkit::brokers();
    let admin: AdminClient<DefaultClientContext> =
        foldline_service::kafka::base_config(&brokers, "retention")
            .create()
            .unwrap();
    let archiver: BaseConsumer = foldline_service::kafka::base_config(&brokers, "retention")
        .set("group.id", archiver_group)
        .create()
        .unwrap();
    let partitions = foldline_service::kafka::topic_partition_count(&brokers, topic)
        .await
        .unwrap();
    let mut asked = TopicPartitionList::new();
    for partition in 0..partitions {
        asked.add_partition(topic, partition);
    }
    let archived = archiver
        .committed_offsets(asked, Duration::from_secs(10))
        .unwrap();
    let mut cut = TopicPartitionList::new();
    let mut lost = 0;
    for element in archived.elements() {
        let Offset::Offset(end) = element.offset() else {
            continue;
        };
        lost += end / 2;
        cut.add_partition_offset(topic, element.partition(), Offset::Offset(end / 2))
            .unwrap();
    }
    let deleted = admin
        .delete_records(&cut, &AdminOptions::new())
        .await
        .unwrap();
    for element in deleted.elements() {
        assert!(element.error().is_ok(), "{element:?}");
        let (low, _) = archiver
            .fetch_watermarks(topic, element.partition(), Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            Offset::Offset(low),
            element.offset(),
            "the log starts later"
        );
    }
    lost
}
