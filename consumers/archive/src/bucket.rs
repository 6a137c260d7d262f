//! The archive bucket: whole-object PUTs, multipart uploads for big files, listing the
//! files of each partition, reading a file back.

use std::collections::BTreeMap;
use std::future::Future;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use foldline_service::aws::{AwsEndpoint, CallError};

use crate::layout::FileRange;

/// S3's smallest part but for the last one (s3s-fs and MinIO enforce it too).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// Where the archive is, and how files are uploaded.
#[derive(clap::Args, Debug, Clone)]
pub struct BucketConfig {
    /// S3 API endpoint (empty: AWS itself).
    #[arg(
        long,
        env = "FOLDLINE_S3_ENDPOINT",
        default_value = "http://127.0.0.1:9000"
    )]
    pub s3_endpoint: String,
    /// Bucket of the archive.
    #[arg(long, env = "FOLDLINE_ARCHIVE_BUCKET", default_value = "event-archive")]
    pub bucket: String,
    /// Key prefix of the archive's files (CONTRACT.md: `products`).
    #[arg(long, env = "FOLDLINE_ARCHIVE_PREFIX", default_value = "products")]
    pub prefix: String,
    /// Files at least this big go up as multipart uploads, in bytes.
    #[arg(long, env = "FOLDLINE_ARCHIVE_MULTIPART_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub multipart_threshold: usize,
    /// Size of each part of a multipart upload, in bytes (at least 5 MiB, S3's minimum).
    #[arg(long, env = "FOLDLINE_ARCHIVE_PART_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub part_size: usize,
    #[command(flatten)]
    pub aws: AwsEndpoint,
}

pub type BucketError = CallError;

fn classify<E>(what: &str, error: SdkError<E, HttpResponse>) -> BucketError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    CallError::classify(what, error)
}

/// What the archiver's sink needs of a bucket, so its rotation, offsets and reseeks are
/// unit-tested over an in-memory bucket (`sink/tests.rs`); [`ArchiveBucket`] is the S3 one.
pub trait Bucket: Send + Sync + 'static {
    /// The key prefix of the archive's files.
    fn prefix(&self) -> &str;
    /// Every archive file, per partition, in offset order.
    fn list(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<i32, Vec<FileRange>>, BucketError>> + Send;
    /// Stores one file under `key`, replacing what is there.
    fn put(&self, key: &str, bytes: Bytes) -> impl Future<Output = Result<(), BucketError>> + Send;
}

impl Bucket for ArchiveBucket {
    fn prefix(&self) -> &str {
        &self.prefix
    }
    async fn list(&self) -> Result<BTreeMap<i32, Vec<FileRange>>, BucketError> {
        ArchiveBucket::list(self).await
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BucketError> {
        ArchiveBucket::put(self, key, bytes).await
    }
}

/// How a file of `len` bytes is cut into multipart parts of `part_size` (the last one
/// shorter): consecutive, covering every byte once.
pub fn part_ranges(len: usize, part_size: usize) -> Vec<std::ops::Range<usize>> {
    let part_size = part_size.max(1);
    (0..len)
        .step_by(part_size)
        .map(|start| start..(start + part_size).min(len))
        .collect()
}

/// The archive bucket.
#[derive(Clone)]
pub struct ArchiveBucket {
    client: Client,
    pub bucket: String,
    pub prefix: String,
    multipart_threshold: usize,
    part_size: usize,
}

impl ArchiveBucket {
    pub async fn connect(config: &BucketConfig) -> ArchiveBucket {
        ArchiveBucket {
            client: foldline_service::aws::s3_client(&config.aws, &config.s3_endpoint).await,
            bucket: config.bucket.clone(),
            prefix: config.prefix.trim_end_matches('/').to_owned(),
            multipart_threshold: config.multipart_threshold.max(1),
            part_size: config.part_size.max(MIN_PART_SIZE),
        }
    }

    /// Creates the bucket unless it exists.
    pub async fn ensure_bucket(&self) -> Result<(), BucketError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => match classify("create bucket", error) {
                // Created meanwhile by someone else.
                CallError::Refused(detail) if detail.contains("BucketAlreadyOwnedByYou") => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Whether the server answers (for `/ready`).
    pub async fn ping(&self) -> Result<(), BucketError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("head bucket", e))
    }

    /// Uploads one file; big files go up in parts. Writing the same key again replaces it
    /// with the same bytes (keys are derived from offsets), so a retry is harmless.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BucketError> {
        if bytes.len() < self.multipart_threshold {
            return self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/avro")
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify("put", e));
        }
        self.put_multipart(key, bytes).await
    }

    async fn put_multipart(&self, key: &str, bytes: Bytes) -> Result<(), BucketError> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/avro")
            .send()
            .await
            .map_err(|e| classify("create multipart upload", e))?;
        let upload_id = upload
            .upload_id()
            .ok_or_else(|| CallError::Unavailable("multipart upload without an id".into()))?
            .to_owned();
        let result = self.upload_parts(key, &upload_id, &bytes).await;
        if result.is_err() {
            // Best effort: a crash leaves the parts behind too (a bucket lifecycle rule for
            // incomplete multipart uploads cleans those up).
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        bytes: &Bytes,
    ) -> Result<(), BucketError> {
        let mut parts = Vec::new();
        for (index, range) in part_ranges(bytes.len(), self.part_size)
            .into_iter()
            .enumerate()
        {
            let number = index as i32 + 1;
            // A view into the file, not a copy.
            let chunk = bytes.slice(range);
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk))
                .send()
                .await
                .map_err(|e| classify("upload part", e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("complete multipart upload", e))
    }

    /// Every archive file, per partition, in offset order.
    pub async fn list(&self) -> Result<BTreeMap<i32, Vec<FileRange>>, BucketError> {
        let mut files: BTreeMap<i32, Vec<FileRange>> = BTreeMap::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}/", self.prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("list", e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                match FileRange::parse(&self.prefix, key) {
                    Some(range) => files.entry(range.partition).or_default().push(range),
                    None => tracing::debug!(key, "not an archive file; ignored"),
                }
            }
        }
        for ranges in files.values_mut() {
            ranges.sort();
        }
        Ok(files)
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, BucketError> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("get", e))?;
        let body = object
            .body
            .collect()
            .await
            .map_err(|e| CallError::Unavailable(format!("get {key}: {e}")))?;
        Ok(body.into_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::part_ranges;

    #[test]
    fn multipart_parts_are_consecutive_cover_every_byte_and_only_the_last_is_short() {
        assert_eq!(part_ranges(10, 4), [0..4, 4..8, 8..10]);
        assert_eq!(
            part_ranges(8, 4),
            [0..4, 4..8],
            "an exact multiple has no empty part"
        );
        assert_eq!(part_ranges(3, 4), vec![(0..3)]);
        assert!(part_ranges(0, 4).is_empty());
        let big = part_ranges(17 * 1024 * 1024, 8 * 1024 * 1024);
        assert_eq!(big.len(), 3);
        assert_eq!(big[2].len(), 1024 * 1024);
    }
}
