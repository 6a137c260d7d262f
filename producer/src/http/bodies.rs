//! The JSON bodies of the commands, as the producer decodes them (`deny_unknown_fields`:
//! an unexpected field is a 422, not silently ignored). Public so the write benchmark's bare
//! HTTP baseline parses exactly the same thing.

use serde::Deserialize;

use crate::domain::Command;
use crate::handler::PlannedCommand;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub(crate) name: String,
    pub(crate) price_cents: i64,
    pub(crate) stock: i64,
    pub(crate) seller_id: String,
    /// The product's own low-stock threshold, 0 to 10,000,000 (default: the producer's).
    #[serde(default)]
    pub(crate) low_stock_threshold: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdBody {
    /// 0 (never low) to 10,000,000.
    pub(crate) threshold: i64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) price_cents: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockBody {
    pub(crate) delta: i64,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub(crate) commands: Vec<BatchCommand>,
}

impl BatchBody {
    /// How many commands the batch holds.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// A command of a batch; `if_match` is the per-command form of the `If-Match` header.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchCommand {
    Create {
        name: String,
        price_cents: i64,
        stock: i64,
        seller_id: String,
        #[serde(default)]
        low_stock_threshold: Option<i64>,
    },
    SetLowStockThreshold {
        id: String,
        threshold: i64,
        #[serde(default)]
        if_match: Option<i64>,
    },
    Update {
        id: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        price_cents: Option<i64>,
        #[serde(default)]
        if_match: Option<i64>,
    },
    AdjustStock {
        id: String,
        delta: i64,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        if_match: Option<i64>,
    },
    Delete {
        id: String,
        #[serde(default)]
        if_match: Option<i64>,
    },
}

impl BatchCommand {
    pub(crate) fn plan(self) -> PlannedCommand {
        let (product_id, command, expected_version) = match self {
            BatchCommand::Create {
                name,
                price_cents,
                stock,
                seller_id,
                low_stock_threshold,
            } => (
                None,
                Command::Create {
                    name,
                    price_cents,
                    stock,
                    seller_id,
                    low_stock_threshold,
                },
                None,
            ),
            BatchCommand::SetLowStockThreshold {
                id,
                threshold,
                if_match,
            } => (
                Some(id),
                Command::SetLowStockThreshold { threshold },
                if_match,
            ),
            BatchCommand::Update {
                id,
                name,
                price_cents,
                if_match,
            } => (Some(id), Command::Update { name, price_cents }, if_match),
            BatchCommand::AdjustStock {
                id,
                delta,
                reason,
                if_match,
            } => (Some(id), Command::AdjustStock { delta, reason }, if_match),
            BatchCommand::Delete { id, if_match } => (Some(id), Command::Delete, if_match),
        };
        PlannedCommand {
            product_id,
            command,
            expected_version,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Hostile and random input: decoding never panics, and what decodes means what it says.
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,20}".prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 96, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("op".to_owned()),
                        Just("name".to_owned()),
                        Just("id".to_owned()),
                        Just("delta".to_owned()),
                        Just("commands".to_owned()),
                        "[a-z_]{0,12}",
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn decode_all(bytes: &[u8]) {
        let _ = serde_json::from_slice::<CreateBody>(bytes);
        let _ = serde_json::from_slice::<UpdateBody>(bytes);
        let _ = serde_json::from_slice::<StockBody>(bytes);
        let _ = serde_json::from_slice::<BatchBody>(bytes);
    }

    proptest! {
        #[test]
        fn any_json_value_decodes_or_is_refused_without_panicking(value in any_json()) {
            decode_all(value.to_string().as_bytes());
            let _ = serde_json::from_value::<BatchBody>(json!({"commands": [value]}));
        }

        #[test]
        fn arbitrary_bytes_are_refused_without_panicking(
            bytes in prop::collection::vec(any::<u8>(), 0..512)
        ) {
            decode_all(&bytes);
        }

        #[test]
        fn a_valid_batch_decodes_into_exactly_the_commands_it_names(
            name in ".{1,50}",
            price in 0i64..,
            stock in 0i64..,
            seller in ".{1,20}",
            delta in any::<i64>(),
            id in "[a-z0-9-]{1,36}",
            if_match in proptest::option::of(1i64..),
            reason in proptest::option::of(".{0,30}"),
        ) {
            let body = json!({"commands": [
                {"op": "create", "name": name, "price_cents": price, "stock": stock, "seller_id": seller},
                {"op": "adjust_stock", "id": id, "delta": delta, "reason": reason, "if_match": if_match},
                {"op": "update", "id": id, "price_cents": price},
                {"op": "delete", "id": id, "if_match": if_match},
            ]});
            let batch: BatchBody = serde_json::from_value(body).unwrap();
            let planned: Vec<PlannedCommand> =
                batch.commands.into_iter().map(BatchCommand::plan).collect();
            prop_assert_eq!(&planned[0].command, &Command::Create {
                name, price_cents: price, stock, seller_id: seller,
                low_stock_threshold: None,
            });
            prop_assert_eq!(planned[0].product_id.as_ref(), None);
            prop_assert_eq!(&planned[1].command, &Command::AdjustStock { delta, reason });
            prop_assert_eq!(planned[1].expected_version, if_match);
            prop_assert_eq!(&planned[2].command, &Command::Update { name: None, price_cents: Some(price) });
            prop_assert_eq!(&planned[3].command, &Command::Delete);
            for p in &planned[1..] {
                prop_assert_eq!(p.product_id.as_deref(), Some(id.as_str()));
            }
        }
    }
}
