//! The archiver on the real stack: crashes and S3 outages leave every partition's files
//! without gap or overlap and every event in exactly one file; restore re-publishes them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use foldline_archive::bucket::{ArchiveBucket, BucketConfig};
use foldline_archive::layout::{check_continuity, FileRange};
use foldline_archive::read::ArchiveReader;
use foldline_schemas::wire::EventCodec;
use foldline_service::aws::AwsEndpoint;
use foldline_testkit::own_server::OwnServer;
use foldline_testkit::process::Spawned;
use foldline_testkit::s3::own_s3;
use rdkafka::Message;
use serde_json::json;

type Events = BTreeSet<(i32, i64, String)>;

struct Setup {
    topic: String,
    bucket: String,
    producer: Spawned,
    s3: OwnServer,
    http: reqwest::Client,
}

impl Setup {
    async fn start() -> Setup {
        let topic = foldline_testkit::unique("archive");
        let producer = Spawned::producer(&topic).await;
        Setup {
            topic,
            bucket: foldline_testkit::unique("bucket"),
            producer,
            s3: own_s3(),
            http: foldline_testkit::auth::client(),
        }
    }

    fn store_config(&self) -> BucketConfig {
        BucketConfig {
            s3_endpoint: self.s3.url(),
            bucket: self.bucket.clone(),
            prefix: "products".into(),
            multipart_threshold: 2048,
            part_size: 5 * 1024 * 1024,
            aws: AwsEndpoint {
                region: "us-east-1".into(),
                local_access_key: "foldline".into(),
                local_secret_key: "foldline-secret".into(),
            },
        }
    }

    /// Starts the archiver without waiting for readiness (it is not ready while S3 is down).
    /// Files close at 25 records or after 1 s and every file goes up as a multipart upload
    /// (create, part, complete), so a kill often lands in the middle of an upload.
    fn archiver(&self) -> Spawned {
        let port = foldline_testkit::process::free_port();
        Spawned::spawn(
            "foldline-archiver",
            &[],
            &[
                ("FOLDLINE_ARCHIVER_LISTEN", format!("127.0.0.1:{port}")),
                ("FOLDLINE_TOPIC", self.topic.clone()),
                ("FOLDLINE_DLQ_TOPIC", format!("{}.dlq", self.topic)),
                (
                    "FOLDLINE_ARCHIVER_GROUP",
                    format!("{}-archiver", self.topic),
                ),
                ("FOLDLINE_S3_ENDPOINT", self.s3.url()),
                ("FOLDLINE_ARCHIVE_BUCKET", self.bucket.clone()),
                ("FOLDLINE_ARCHIVE_FILE_RECORDS", "25".into()),
                ("FOLDLINE_ARCHIVE_FILE_SECONDS", "1".into()),
                ("FOLDLINE_ARCHIVE_MULTIPART_BYTES", "2048".into()),
                ("FOLDLINE_BATCH_RECORDS", "40".into()),
            ],
            port,
        )
    }

    /// `rounds` requests of 5 creates plus, from the second round, 5 stock changes.
    async fn load(&self, rounds: usize) {
        let mut ids: Vec<String> = Vec::new();
        for round in 0..rounds {
            let mut commands: Vec<serde_json::Value> = (0..5)
                .map(|i| {
                    json!({"op": "create", "name": format!("n{round}-{i}"), "price_cents": 100,
                               "stock": 50, "seller_id": "s-1"})
                })
                .collect();
            commands.extend(
                ids.iter()
                    .rev()
                    .take(5)
                    .map(|id| json!({"op": "adjust_stock", "id": id, "delta": -1})),
            );
            let body =
                foldline_testkit::writes::post_commands(&self.http, &self.producer.url, &commands)
                    .await;
            for result in body["results"].as_array().unwrap().iter().take(5) {
                ids.push(result["id"].as_str().unwrap().to_owned());
            }
        }
    }

    /// (partition, offset, event id) of every event in `topic`.
    async fn events_of(topic: &str) -> Events {
        let codec = EventCodec::new(&foldline_testkit::registry_url(), topic).unwrap();
        let mut events = BTreeSet::new();
        for m in foldline_testkit::read_all(&foldline_testkit::brokers(), topic).await {
            let event = codec.decode(m.payload().unwrap()).await.unwrap();
            assert_eq!(
                m.key(),
                Some(event.product_id.as_bytes()),
                "keyed by product"
            );
            events.insert((m.partition(), m.offset(), event.event_id.to_string()));
        }
        events
    }

    /// Waits until the archive holds every event of the topic, then checks it: per partition
    /// no gap and no overlap from offset 0, and every event in exactly one file.
    async fn assert_archive_complete(&self) {
        let expected = Self::events_of(&self.topic).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let (files, archived) = self.archived().await;
            if archived.len() >= expected.len() {
                let distinct: Events = archived.iter().cloned().collect();
                assert_eq!(distinct.len(), archived.len(), "an event is in two files");
                assert_eq!(
                    distinct, expected,
                    "the archive holds exactly the topic's events"
                );
                for (partition, ranges) in &files {
                    assert_eq!(ranges[0].first, 0, "partition {partition} starts at 0");
                    assert_eq!(check_continuity(ranges), Ok(()), "partition {partition}");
                }
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "archive incomplete: {} of {} events",
                archived.len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The archive's files per partition and every record in them (duplicates kept).
    async fn archived(&self) -> (BTreeMap<i32, Vec<FileRange>>, Vec<(i32, i64, String)>) {
        let store = ArchiveBucket::connect(&self.store_config()).await;
        let Ok(reader) = ArchiveReader::open(store.clone()).await else {
            return (BTreeMap::new(), Vec::new());
        };
        let mut events = Vec::new();
        for ranges in reader.files.values() {
            for range in ranges {
                let bytes = store.get(&range.key("products")).await.unwrap();
                for r in foldline_archive::file::read_file(&bytes).unwrap() {
                    assert!(r.offset >= range.first && r.offset <= range.last);
                    assert_eq!(r.partition, range.partition);
                    events.push((r.partition, r.offset, r.event.event_id.to_string()));
                }
            }
        }
        (reader.files, events)
    }

    /// `foldline verify --only archive` against this setup: (exit code, stdout).
    fn verify(&self) -> (Option<i32>, String) {
        let output = std::process::Command::new(foldline_testkit::process::binary("foldline"))
            .args(["verify", "--quiet", "--only", "archive"])
            .env("FOLDLINE_TOPIC", &self.topic)
            .env(
                "FOLDLINE_ARCHIVER_GROUP",
                format!("{}-archiver", self.topic),
            )
            .env("FOLDLINE_S3_ENDPOINT", self.s3.url())
            .env("FOLDLINE_ARCHIVE_BUCKET", &self.bucket)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    async fn archiver_command(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(foldline_testkit::process::binary("foldline-archiver"))
            .args(args)
            .env("FOLDLINE_S3_ENDPOINT", self.s3.url())
            .env("FOLDLINE_ARCHIVE_BUCKET", &self.bucket)
            .output()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn kill_9_mid_upload_then_restart_archives_every_event_exactly_once() {
    let setup = Setup::start().await;
    let mut archiver = setup.archiver();
    for _ in 0..3 {
        setup.load(8).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        archiver.kill();
        archiver = setup.archiver();
    }
    setup.load(4).await;
    setup.assert_archive_complete().await;
    drop(archiver);
}

#[tokio::test]
async fn an_s3_outage_pauses_the_archiver_which_then_resumes_without_gap_or_overlap() {
    let mut setup = Setup::start().await;
    let archiver = setup.archiver();
    archiver.wait_ready(Duration::from_secs(60)).await;
    setup.load(6).await;
    setup.s3.kill();
    setup.load(6).await;
    archiver
        .wait_not_ready(
            Duration::from_secs(30),
            "the archiver stayed ready without S3",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    setup.s3.resume();
    setup.load(6).await;
    archiver.wait_ready(Duration::from_secs(60)).await;
    setup.assert_archive_complete().await;
}

#[tokio::test]
async fn restore_republishes_the_archive_in_order_per_partition() {
    let setup = Setup::start().await;
    let mut archiver = setup.archiver();
    setup.load(10).await;
    setup.assert_archive_complete().await;
    assert!(archiver.terminate(), "graceful shutdown");

    let target = foldline_testkit::unique("restored");
    foldline_service::kafka::ensure_topic(&foldline_testkit::brokers(), &target, 3, &[])
        .await
        .unwrap();
    let output = setup
        .archiver_command(&["restore", "--to-topic", &target])
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let per_partition = |events: Events| {
        let mut by: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for (p, _, id) in events {
            by.entry(p).or_default().push(id);
        }
        by
    };
    let original = per_partition(Setup::events_of(&setup.topic).await);
    let restored = per_partition(Setup::events_of(&target).await);
    assert_eq!(
        restored, original,
        "same events, same partitions, same order"
    );
    let total: usize = original.values().map(Vec::len).sum();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains(&format!("restored {total} events")),
        "{printed}"
    );
}

#[tokio::test]
async fn list_prints_the_files_and_fails_on_a_gap() {
    let setup = Setup::start().await;
    let archiver = setup.archiver();
    setup.load(16).await;
    setup.assert_archive_complete().await;
    drop(archiver);
    let output = setup.archiver_command(&["list"]).await;
    assert!(output.status.success());
    let (files, _) = setup.archived().await;
    let listed: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = files
        .values()
        .flatten()
        .map(|f| f.key("products"))
        .collect();
    assert_eq!(listed, expected);

    // A file missing in the middle of a partition is a gap.
    let ranges = files
        .values()
        .find(|r| r.len() >= 3)
        .expect("a partition with 3 files");
    let path = setup
        .s3
        .dir
        .join(&setup.bucket)
        .join(ranges[1].key("products"));
    std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let output = setup.archiver_command(&["list"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Gap"));
    let (code, out) = setup.verify();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("no file holds offsets {}", ranges[1].first)),
        "{out}"
    );
    assert!(out.contains("projection: in no file"), "{out}");
}

#[tokio::test]
async fn verify_finds_every_record_in_exactly_one_file_and_a_copied_file() {
    let setup = Setup::start().await;
    let archiver = setup.archiver();
    setup.load(12).await;
    setup.assert_archive_complete().await;
    drop(archiver);
    let events = Setup::events_of(&setup.topic).await;
    let (code, out) = setup.verify();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("archive: {} records", events.len())),
        "every record is checked: {out}"
    );
    // A file copied under another date: its records are in two files now.
    let (files, _) = setup.archived().await;
    let file = files.values().flatten().next().unwrap();
    let store = ArchiveBucket::connect(&setup.store_config()).await;
    let bytes = store.get(&file.key("products")).await.unwrap();
    let copy = FileRange {
        date: file.date.pred_opt().unwrap(),
        ..*file
    };
    store
        .put(&copy.key("products"), bytes.into())
        .await
        .unwrap();
    let (code, out) = setup.verify();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("overlap"), "{out}");
}
