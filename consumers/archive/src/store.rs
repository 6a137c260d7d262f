//! The archive bucket: whole-object PUTs, multipart uploads for big files, listing the
//! files of each partition, reading a file back.

use std::collections::BTreeMap;

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
pub struct StoreConfig {
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

pub type StoreError = CallError;

fn classify<E>(what: &str, error: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    CallError::classify(what, error)
}

/// The archive bucket.
#[derive(Clone)]
pub struct ArchiveStore {
    client: Client,
    pub bucket: String,
    pub prefix: String,
    multipart_threshold: usize,
    part_size: usize,
}

impl ArchiveStore {
    pub async fn connect(config: &StoreConfig) -> ArchiveStore {
        ArchiveStore {
            client: foldline_service::aws::s3_client(&config.aws, &config.s3_endpoint).await,
            bucket: config.bucket.clone(),
            prefix: config.prefix.trim_end_matches('/').to_owned(),
            multipart_threshold: config.multipart_threshold.max(1),
            part_size: config.part_size.max(MIN_PART_SIZE),
        }
    }

    /// Creates the bucket unless it exists.
    pub async fn ensure_bucket(&self) -> Result<(), StoreError> {
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
    pub async fn ping(&self) -> Result<(), StoreError> {
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
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
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

    async fn put_multipart(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
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
    ) -> Result<(), StoreError> {
        let mut parts = Vec::new();
        for (index, start) in (0..bytes.len()).step_by(self.part_size).enumerate() {
            let number = index as i32 + 1;
            // A view into the file, not a copy.
            let chunk = bytes.slice(start..(start + self.part_size).min(bytes.len()));
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
    pub async fn list(&self) -> Result<BTreeMap<i32, Vec<FileRange>>, StoreError> {
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

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
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
