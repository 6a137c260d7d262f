//! Parked records of the recent-events consumer, kept in its own table under the partition
//! key `parked` (sort key `<partition>#<offset>`, unique per record of the topic), beside the
//! events: written in the same BatchWriteItem calls as the batch's items, before its offsets
//! are committed, so a crash redelivers the batch and writes the same items again. Only where
//! the record is and why: the log keeps the record itself. Never read by the event routes
//! (they read `product#…` and `day#…`), never expired (no `ttl`).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};
use aws_sdk_dynamodb::Client;
use foldline_consumer_runtime::Parked;
use foldline_service::aws::CallError;

use crate::items::Item;

pub const PARKED_PK: &str = "parked";
/// An error's text can be long; what an operator needs is its start.
const REASON_MAX_CHARS: usize = 1_000;

fn sort_key(partition: i32, offset: i64) -> String {
    format!("{partition:010}#{offset:020}")
}

/// The item that keeps `parked`.
pub fn parked_item(parked: &Parked) -> Item {
    let s = |v: String| AttributeValue::S(v);
    let n = |v: i64| AttributeValue::N(v.to_string());
    HashMap::from([
        ("pk".to_owned(), s(PARKED_PK.to_owned())),
        (
            "sk".to_owned(),
            s(sort_key(parked.partition, parked.offset)),
        ),
        ("partition".to_owned(), n(i64::from(parked.partition))),
        ("offset".to_owned(), n(parked.offset)),
        ("product_id".to_owned(), s(parked.product_id.clone())),
        ("version".to_owned(), n(parked.version)),
        ("event_type".to_owned(), s(parked.event_type.clone())),
        (
            "reason".to_owned(),
            s(parked.reason.chars().take(REASON_MAX_CHARS).collect()),
        ),
    ])
}

fn from_item(item: &Item) -> Option<Parked> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    let number = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<i64>().ok())
    };
    Some(Parked {
        partition: i32::try_from(number("partition")?).ok()?,
        offset: number("offset")?,
        product_id: text("product_id")?,
        version: number("version")?,
        event_type: text("event_type")?,
        reason: text("reason").unwrap_or_default(),
    })
}

/// Every parked entry of the table, in log order per partition.
pub async fn read_parked(client: &Client, table: &str) -> Result<Vec<Parked>, CallError> {
    let mut parked = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let answer = client
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(PARKED_PK.to_owned()))
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| CallError::classify("query parked", e))?;
        parked.extend(answer.items().iter().filter_map(from_item));
        match answer.last_evaluated_key() {
            Some(key) if !key.is_empty() => start = Some(key.clone()),
            _ => return Ok(parked),
        }
    }
}

/// Deletes the entries (25 per request, DynamoDB's limit).
pub async fn delete_parked(
    client: &Client,
    table: &str,
    entries: &[Parked],
) -> Result<(), CallError> {
    for chunk in entries.chunks(crate::items::ITEMS_PER_REQUEST) {
        let deletes: Vec<WriteRequest> = chunk
            .iter()
            .map(|p| {
                let key = HashMap::from([
                    ("pk".to_owned(), AttributeValue::S(PARKED_PK.to_owned())),
                    (
                        "sk".to_owned(),
                        AttributeValue::S(sort_key(p.partition, p.offset)),
                    ),
                ]);
                let delete = DeleteRequest::builder()
                    .set_key(Some(key))
                    .build()
                    .expect("a key is set");
                WriteRequest::builder().delete_request(delete).build()
            })
            .collect();
        let answer = client
            .batch_write_item()
            .request_items(table, deletes)
            .send()
            .await
            .map_err(|e| CallError::classify("delete parked", e))?;
        if answer
            .unprocessed_items()
            .is_some_and(|u| u.values().any(|v| !v.is_empty()))
        {
            return Err(CallError::Unavailable(
                "parked entries left unprocessed; retrying".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_its_item_and_long_reasons_are_cut() {
        let parked = Parked {
            partition: 2,
            offset: 41,
            product_id: "p\0with nul".into(),
            version: 7,
            event_type: "StockAdjusted".into(),
            reason: "x".repeat(5_000),
        };
        let item = parked_item(&parked);
        assert_eq!(
            item["sk"].as_s().unwrap(),
            "0000000002#00000000000000000041"
        );
        let back = from_item(&item).unwrap();
        assert_eq!(back.reason.len(), REASON_MAX_CHARS);
        assert_eq!(
            Parked {
                reason: parked.reason.clone(),
                ..back
            },
            parked
        );
    }
}
