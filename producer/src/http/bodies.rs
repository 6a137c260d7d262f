//! The JSON bodies of the commands, as the producer decodes them (`deny_unknown_fields`:
//! an unexpected field is a 422, not silently ignored). Public so the write benchmark's bare
//! HTTP baseline parses exactly the same thing.

use serde::Deserialize;

use crate::domain::Command;
use crate::service::PlannedCommand;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub(crate) name: String,
    pub(crate) price_cents: i64,
    pub(crate) stock: i64,
    pub(crate) seller_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) price_cents: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockBody {
    pub(crate) delta: i64,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

#[derive(Deserialize)]
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
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchCommand {
    Create {
        name: String,
        price_cents: i64,
        stock: i64,
        seller_id: String,
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
            } => (
                None,
                Command::Create {
                    name,
                    price_cents,
                    stock,
                    seller_id,
                },
                None,
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
