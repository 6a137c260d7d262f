//! The DynamoDB recent-events consumer.
//! - [`items`]: the pure mapping of an event to its two items.
//! - [`table`]: creating the table with TTL.
//! - [`sink`]: BatchWriteItem in chunks of 25, unprocessed items retried.
pub mod items;
pub mod sink;
pub mod table;

/// The consumer group of the recent-events consumer.
pub const DEFAULT_GROUP: &str = "foldline-recent-events";

/// A DynamoDB client for `endpoint` (empty: AWS itself).
pub async fn client(
    aws: &foldline_service::aws::AwsEndpoint,
    endpoint: &str,
) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&aws.sdk_config(endpoint).await)
}
