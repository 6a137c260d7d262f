//! The DynamoDB recent-events consumer.
//! - [`items`]: the pure mapping of an event to its two items.
//! - [`table`]: creating the table with TTL.
//! - [`sink`]: BatchWriteItem in chunks of 25, unprocessed items retried.
//! - [`read`]: a product's recent events back (the query API serves them).
//! - [`parked`]: entries of parked records, under the partition key `parked`.
pub mod items;
pub mod parked;
pub mod read;
pub mod sink;
pub mod table;

/// The consumer group of the recent-events consumer.
pub const DEFAULT_GROUP: &str = "foldline-recent-events";

/// Where the DynamoDB API is and how to sign for it.
#[derive(clap::Args, Debug, Clone)]
pub struct DynamoDb {
    #[command(flatten)]
    pub aws: foldline_service::aws::AwsEndpoint,
    /// DynamoDB API endpoint (empty: AWS itself).
    #[arg(
        long,
        env = "FOLDLINE_DYNAMODB_ENDPOINT",
        default_value = "http://127.0.0.1:8000"
    )]
    pub dynamodb_endpoint: String,
}

impl DynamoDb {
    pub async fn client(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.aws.sdk_config(&self.dynamodb_endpoint).await)
    }
}
