//! AWS SDK settings for the S3- and DynamoDB-compatible servers the consumers write to.
//!
//! Credentials and region come from the SDK's usual sources (env `AWS_ACCESS_KEY_ID`, …,
//! profiles, instance roles). Without any, the local stack's keys are used, so the binaries
//! work against `scripts/up` with no configuration.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Where an AWS-API server is and how to sign for it.
#[derive(clap::Args, Debug, Clone)]
pub struct AwsEndpoint {
    /// Region to sign requests for.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Access key used when no AWS credentials are configured (the local stack's).
    #[arg(long, env = "FOLDLINE_LOCAL_ACCESS_KEY", default_value = "foldline")]
    pub local_access_key: String,
    /// Secret key used when no AWS credentials are configured (the local stack's).
    #[arg(
        long,
        env = "FOLDLINE_LOCAL_SECRET_KEY",
        default_value = "foldline-secret",
        hide_env_values = true
    )]
    pub local_secret_key: String,
}

impl AwsEndpoint {
    /// SDK settings for the server at `endpoint_url` (empty: the real AWS endpoint).
    pub async fn sdk_config(&self, endpoint_url: &str) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()));
        if !endpoint_url.is_empty() {
            loader = loader.endpoint_url(endpoint_url);
        }
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
            && std::env::var_os("AWS_PROFILE").is_none()
        {
            loader = loader.credentials_provider(Credentials::new(
                &self.local_access_key,
                &self.local_secret_key,
                None,
                None,
                "foldline-local-defaults",
            ));
        }
        loader.load().await
    }
}

/// An S3 client for the server at `endpoint_url` (empty: AWS itself) that also works with
/// S3-compatible servers (s3s-fs, MinIO).
#[cfg(feature = "s3")]
pub async fn s3_client(aws: &AwsEndpoint, endpoint_url: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
    let sdk = aws.sdk_config(endpoint_url).await;
    let config = aws_sdk_s3::config::Builder::from(&sdk)
        // Local servers and MinIO address buckets by path, not by host name.
        .force_path_style(true)
        // Checksums only where S3 requires them: S3-compatible servers differ in the newer
        // trailing-checksum encodings.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// An SDK call's failure, sorted by whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server is down, slow, overloaded or throttling: retry with backoff.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request itself is refused (missing bucket or table, no permission, invalid).
    #[error("refused: {0}")]
    Refused(String),
    /// The request's data is past a limit of the store (DynamoDB: an item or a key too
    /// large): the same data is refused every time, whatever the configuration.
    #[error("data refused: {0}")]
    TooLarge(String),
}

impl crate::retry::Transient for CallError {
    fn is_transient(&self) -> bool {
        matches!(self, CallError::Unavailable(_))
    }
}

impl CallError {
    /// No answer at all (connection refused, timeout), 5xx, 429 and the throttling codes are
    /// transient; any other answer is a refusal.
    pub fn classify<E>(what: &str, error: SdkError<E, HttpResponse>) -> CallError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = error.raw_response().map(|r| r.status().as_u16());
        let code = error.code().unwrap_or_default().to_owned();
        let detail = format!("{what}: {}", DisplayErrorContext(&error));
        let throttled = matches!(
            code.as_str(),
            "SlowDown"
                | "RequestTimeout"
                | "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
                | "InternalServerError"
                | "ServiceUnavailable"
        );
        // DynamoDB says "Item size has exceeded the maximum allowed size" or "Size of
        // hashkey has exceeded the maximum size limit"; other validation errors (a missing key
        // attribute) are a configuration problem, not the data's.
        let too_large = code == "ValidationException"
            && error
                .message()
                .is_some_and(|m| m.to_ascii_lowercase().contains("size"));
        match status {
            None => CallError::Unavailable(detail),
            Some(s) if s == 429 || s >= 500 || throttled => CallError::Unavailable(detail),
            Some(_) if too_large => CallError::TooLarge(detail),
            Some(_) => CallError::Refused(detail),
        }
    }
}
