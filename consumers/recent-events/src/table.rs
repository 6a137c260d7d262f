//! Creating the `RecentEvents` table (if missing) with TTL on `ttl`.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_dynamodb::Client;
use foldline_service::aws::CallError;

/// Makes sure `table` exists with key `pk`/`sk` (strings), is active, and expires items by
/// their `ttl` attribute.
pub async fn ensure_table(client: &Client, table: &str) -> Result<(), CallError> {
    let exists = match client.describe_table().table_name(table).send().await {
        Ok(_) => true,
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            false
        }
        Err(error) => return Err(CallError::classify("describe table", error)),
    };
    if !exists {
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .expect("complete key schema")
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("complete attribute definition")
        };
        let created = client
            .create_table()
            .table_name(table)
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .attribute_definitions(attribute("pk"))
            .attribute_definitions(attribute("sk"))
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!(table, "created the recent-events table"),
            // Another instance created it meanwhile.
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(error) => return Err(CallError::classify("create table", error)),
        }
    }
    wait_active(client, table).await?;
    let ttl = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| CallError::classify("describe time to live", e))?;
    let status = ttl
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status());
    if !matches!(
        status,
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ) {
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name("ttl")
                    .build()
                    .expect("complete TTL specification"),
            )
            .send()
            .await
            .map_err(|e| CallError::classify("update time to live", e))?;
        tracing::info!(table, "enabled TTL on `ttl`");
    }
    Ok(())
}

async fn wait_active(client: &Client, table: &str) -> Result<(), CallError> {
    for _ in 0..120 {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| CallError::classify("describe table", e))?;
        if described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(CallError::Unavailable(format!(
        "table {table} did not become active within a minute"
    )))
}
