//! The S3 archive's side of `foldline verify`: every record in the log before the archiver's
//! committed offsets is in exactly one archive file, the one whose name covers its offset,
//! with the same event; the files of a partition follow each other with no gap and no
//! overlap; and no file holds a record the log does not (before the cut).

use std::collections::HashMap;

use clap::Args;
use foldline_archive::bucket::{ArchiveBucket, BucketConfig};
use foldline_archive::layout::{check_continuity, Continuity};
use foldline_archive::read::ArchiveReader;
use foldline_consumer_runtime::Record;
use foldline_service::position::Offsets;
use uuid::Uuid;

use super::Difference;

#[derive(Args, Clone)]
pub struct ArchiveArgs {
    /// The archiver's consumer group (whose committed offsets are the cut).
    #[arg(long, env = "FOLDLINE_ARCHIVER_GROUP", default_value = foldline_archive::DEFAULT_GROUP)]
    archiver_group: String,
    /// S3 API endpoint of the archive (empty: AWS itself).
    #[arg(
        long,
        env = "FOLDLINE_S3_ENDPOINT",
        default_value = "http://127.0.0.1:9000"
    )]
    s3_endpoint: String,
    /// Bucket of the archive.
    #[arg(long, env = "FOLDLINE_ARCHIVE_BUCKET", default_value = "event-archive")]
    archive_bucket: String,
    /// Key prefix of the archive's files.
    #[arg(long, env = "FOLDLINE_ARCHIVE_PREFIX", default_value = "products")]
    archive_prefix: String,
}

impl ArchiveArgs {
    /// The archive's bucket, to read.
    pub fn bucket(&self, aws: &foldline_service::aws::AwsEndpoint) -> BucketConfig {
        BucketConfig {
            s3_endpoint: self.s3_endpoint.clone(),
            bucket: self.archive_bucket.clone(),
            prefix: self.archive_prefix.clone(),
            // Only read: upload sizes do not matter.
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            aws: aws.clone(),
        }
    }
}

pub struct Check {
    pub cut: Offsets,
    /// Every record before the cut: its event.
    logged: HashMap<(i32, i64), Uuid>,
    bucket: BucketConfig,
}

impl Check {
    pub fn start(
        args: &ArchiveArgs,
        aws: &foldline_service::aws::AwsEndpoint,
        brokers: &str,
        topic: &str,
        partitions: &[i32],
    ) -> anyhow::Result<Check> {
        Ok(Check {
            cut: crate::topic::committed_offsets(brokers, &args.archiver_group, topic, partitions)?,
            logged: HashMap::new(),
            bucket: args.bucket(aws),
        })
    }

    pub fn apply(&mut self, record: &Record) {
        if self
            .cut
            .get(record.partition)
            .is_some_and(|c| record.offset < c)
        {
            self.logged
                .insert((record.partition, record.offset), record.event.event_id);
        }
    }

    /// Reads every file; the number of records before the cut and the differences.
    pub async fn compare(self) -> anyhow::Result<(usize, Vec<Difference>)> {
        let reader = ArchiveReader::open(ArchiveBucket::connect(&self.bucket).await).await?;
        let mut differences = Vec::new();
        for (partition, files) in &reader.files {
            match check_continuity(files) {
                Ok(()) => {}
                Err(Continuity::Gap { after, next_first }) => differences.push(Difference {
                    what: format!("archive partition {partition}"),
                    model: format!("no file holds offsets {} to {}", after + 1, next_first - 1),
                    log: "every offset in exactly one file".into(),
                }),
                Err(Continuity::Overlap { first, second }) => differences.push(Difference {
                    what: format!("archive partition {partition}"),
                    model: format!("files {first:?} and {second:?} overlap"),
                    log: "every offset in exactly one file".into(),
                }),
            }
        }
        // Each record as archived: how many times, and with which event.
        let mut archived: HashMap<(i32, i64), (u32, Uuid)> = HashMap::new();
        let mut files = reader.stream(&Offsets::new());
        while let Some(file) = files.recv().await {
            let file = file?;
            for record in &file.records {
                if record.offset < file.range.first || record.offset > file.range.last {
                    differences.push(Difference {
                        what: format!("archive file {:?}", file.range),
                        model: format!("holds offset {}", record.offset),
                        log: "only the offsets its name says".into(),
                    });
                }
                let entry = archived
                    .entry((record.partition, record.offset))
                    .or_insert((0, record.event.event_id));
                entry.0 += 1;
            }
        }
        let compared = self.logged.len();
        let mut missing: Vec<(i32, i64)> = Vec::new();
        for (position, event_id) in &self.logged {
            match archived.get(position) {
                None => missing.push(*position),
                Some((1, archived_id)) if archived_id == event_id => {}
                Some((count, archived_id)) => differences.push(Difference {
                    what: format!("archived record {}:{}", position.0, position.1),
                    model: format!("{count} copies, event {archived_id}"),
                    log: format!("one copy, event {event_id}"),
                }),
            }
        }
        missing.sort_unstable();
        for (partition, offset) in missing {
            differences.push(Difference {
                what: format!("archived record {partition}:{offset}"),
                model: "in no file".into(),
                log: "a record before the archiver's committed offsets".into(),
            });
        }
        for (partition, offset) in archived.keys() {
            let before_cut = self.cut.get(*partition).is_some_and(|c| *offset < c);
            if before_cut && !self.logged.contains_key(&(*partition, *offset)) {
                differences.push(Difference {
                    what: format!("archived record {partition}:{offset}"),
                    model: "archived".into(),
                    log: "no committed record there".into(),
                });
            }
        }
        Ok((compared, differences))
    }
}
