//! The product aggregate: pure decisions and folds, no I/O.
//!
//! `decide(actor, state, command)` answers which events a command produces (or why it is refused);
//! `evolve(state, event)` folds one event into the state. The producer, its start-up replay
//! and every projection agree because they fold the same events.

use foldline_schemas::{
    limits, Envelope, LowStockThresholdSet, LowStockWarning, Payload, ProductCreated,
    ProductDeleted, ProductUpdated, StockAdjusted,
};

pub const MAX_NAME_CHARS: usize = limits::NAME_MAX_CHARS;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
    pub seller_id: String,
    pub version: i64,
    pub deleted: bool,
    /// Its own low-stock threshold (`None`: the producer's default). Snapshots written before
    /// it existed read as `None`.
    #[serde(default)]
    pub low_stock_threshold: Option<i64>,
}

impl Product {
    /// The threshold below which the product is low on stock.
    pub fn threshold(&self, default: i64) -> i64 {
        self.low_stock_threshold.unwrap_or(default)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Create {
        name: String,
        price_cents: i64,
        stock: i64,
        seller_id: String,
        low_stock_threshold: Option<i64>,
    },
    SetLowStockThreshold {
        threshold: i64,
    },
    Update {
        name: Option<String>,
        price_cents: Option<i64>,
    },
    AdjustStock {
        delta: i64,
        reason: Option<String>,
    },
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("product not found")]
    NotFound,
    #[error("stock is {stock}; a change of {delta} would take it below zero")]
    InsufficientStock { stock: i64, delta: i64 },
    #[error("the product is at version {actual}, not {expected}")]
    VersionMismatch { expected: i64, actual: i64 },
    #[error("seller {seller} may not act on products of seller {owner}")]
    Forbidden { seller: String, owner: String },
}

/// Who issues a command (from the writer's JWT).
pub use foldline_service::auth::{Actor, Role};

/// Whether `actor` may run `command` on the product as it is (`current`). A seller's create
/// must name its own seller id; its other commands must touch its own products. An unknown
/// product is left to [`decide`] (404), so a seller learns nothing more about other sellers'
/// ids than "not yours".
pub fn authorize(
    actor: &Actor,
    current: Option<&Product>,
    command: &Command,
) -> Result<(), DomainError> {
    let Role::Seller(own) = &actor.role else {
        return Ok(());
    };
    let owner = match command {
        Command::Create { seller_id, .. } => Some(seller_id.as_str()),
        _ => current.filter(|p| !p.deleted).map(|p| p.seller_id.as_str()),
    };
    match owner {
        Some(owner) if owner != own => Err(DomainError::Forbidden {
            seller: own.clone(),
            owner: owner.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl From<limits::Violation> for DomainError {
    fn from(v: limits::Violation) -> Self {
        DomainError::Invalid {
            field: v.field,
            reason: v.reason,
        }
    }
}

/// The limits of every field a command carries (`foldline_schemas::limits`), checked before
/// any state is looked at: a command past a limit is refused the same whatever the product.
pub fn check_limits(command: &Command) -> Result<(), DomainError> {
    match command {
        Command::Create {
            name,
            price_cents,
            stock,
            seller_id,
            low_stock_threshold,
        } => {
            limits::check_name(name)?;
            limits::check_price_cents(*price_cents)?;
            limits::check_stock(*stock)?;
            limits::check_seller_id(seller_id)?;
            if let Some(threshold) = low_stock_threshold {
                limits::check_low_stock_threshold(*threshold)?;
            }
        }
        Command::SetLowStockThreshold { threshold } => {
            limits::check_low_stock_threshold(*threshold)?;
        }
        Command::Update { name, price_cents } => {
            if let Some(name) = name {
                limits::check_name(name)?;
            }
            if let Some(price) = price_cents {
                limits::check_price_cents(*price)?;
            }
        }
        Command::AdjustStock { delta, reason } => {
            limits::check_delta(*delta)?;
            if let Some(reason) = reason {
                limits::check_reason(reason)?;
            }
        }
        Command::Delete => {}
    }
    Ok(())
}

/// The events `command`, issued by `actor`, produces on `current` (`None`: the product does
/// not exist yet). Authorization comes first and cannot be skipped: every command that
/// reaches the domain carries its actor. `expected_version` is the `If-Match` precondition,
/// checked next, before any rule.
pub fn decide(
    actor: &Actor,
    current: Option<&Product>,
    command: &Command,
    expected_version: Option<i64>,
    low_stock_threshold: i64,
) -> Result<Vec<Payload>, DomainError> {
    authorize(actor, current, command)?;
    rules(current, command, expected_version, low_stock_threshold)
}

fn rules(
    current: Option<&Product>,
    command: &Command,
    expected_version: Option<i64>,
    low_stock_threshold: i64,
) -> Result<Vec<Payload>, DomainError> {
    if let Command::Create {
        name,
        price_cents,
        stock,
        seller_id,
        low_stock_threshold,
    } = command
    {
        check_limits(command)?;
        return Ok(vec![Payload::ProductCreated(ProductCreated {
            name: name.clone(),
            price_cents: *price_cents,
            stock: *stock,
            seller_id: seller_id.clone(),
            low_stock_threshold: *low_stock_threshold,
        })]);
    }
    let product = match current {
        Some(p) if !p.deleted => p,
        _ => return Err(DomainError::NotFound),
    };
    if let Some(expected) = expected_version {
        if expected != product.version {
            return Err(DomainError::VersionMismatch {
                expected,
                actual: product.version,
            });
        }
    }
    match command {
        Command::Create { .. } => unreachable!("handled above"),
        Command::Update { name, price_cents } => {
            if name.is_none() && price_cents.is_none() {
                return Err(invalid("body", "give at least one of name, price_cents"));
            }
            check_limits(command)?;
            Ok(vec![Payload::ProductUpdated(ProductUpdated {
                name: name.clone(),
                price_cents: *price_cents,
            })])
        }
        Command::AdjustStock { delta, reason } => {
            check_limits(command)?;
            // Both are within ±STOCK_MAX: the sum cannot overflow.
            let new_stock = product.stock + delta;
            if new_stock > limits::STOCK_MAX {
                return Err(invalid(
                    "delta",
                    format!(
                        "would take the stock from {} to {new_stock}, past the limit of {}",
                        product.stock,
                        limits::STOCK_MAX
                    ),
                ));
            }
            if new_stock < 0 {
                return Err(DomainError::InsufficientStock {
                    stock: product.stock,
                    delta: *delta,
                });
            }
            let mut events = vec![Payload::StockAdjusted(StockAdjusted {
                delta: *delta,
                new_stock,
                reason: reason.clone(),
                previous_stock: product.stock,
            })];
            let threshold = product.threshold(low_stock_threshold);
            if product.stock >= threshold && new_stock < threshold {
                events.push(Payload::LowStockWarning(LowStockWarning {
                    stock: new_stock,
                    threshold,
                }));
            }
            Ok(events)
        }
        Command::SetLowStockThreshold { threshold } => {
            check_limits(command)?;
            let mut events = vec![Payload::LowStockThresholdSet(LowStockThresholdSet {
                threshold: *threshold,
            })];
            // Raising the threshold past the stock makes the product low, as a sale would.
            if product.stock >= product.threshold(low_stock_threshold) && product.stock < *threshold
            {
                events.push(Payload::LowStockWarning(LowStockWarning {
                    stock: product.stock,
                    threshold: *threshold,
                }));
            }
            Ok(events)
        }
        Command::Delete => Ok(vec![Payload::ProductDeleted(ProductDeleted {})]),
    }
}

/// Folds one event into the product's state.
pub fn evolve(current: Option<Product>, event: &Envelope) -> Option<Product> {
    let mut product = match (&event.payload, current) {
        (Payload::ProductCreated(c), _) => Product {
            id: event.product_id.clone(),
            name: c.name.clone(),
            price_cents: c.price_cents,
            stock: c.stock,
            seller_id: c.seller_id.clone(),
            version: event.version,
            deleted: false,
            low_stock_threshold: c.low_stock_threshold,
        },
        (_, None) => return None,
        (_, Some(p)) => p,
    };
    product.version = event.version;
    match &event.payload {
        Payload::ProductCreated(_) | Payload::LowStockWarning(_) => {}
        Payload::ProductUpdated(u) => {
            if let Some(name) = &u.name {
                product.name = name.clone();
            }
            if let Some(price) = u.price_cents {
                product.price_cents = price;
            }
        }
        Payload::StockAdjusted(s) => product.stock = s.new_stock,
        Payload::ProductDeleted(_) => product.deleted = true,
        Payload::LowStockThresholdSet(t) => product.low_stock_threshold = Some(t.threshold),
    }
    Some(product)
}

#[cfg(test)]
mod tests {
    //! Given past events, when a command, then these new events (or this error).
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    const THRESHOLD: i64 = 5;

    fn envelope(version: i64, payload: Payload) -> Envelope {
        Envelope {
            actor: None,
            event_id: Uuid::new_v4(),
            product_id: "p1".into(),
            version,
            occurred_at: Utc::now(),
            correlation_id: "c".into(),
            idempotency_key: None,
            command_index: None,
            payload,
        }
    }

    fn created(stock: i64) -> Payload {
        Payload::ProductCreated(ProductCreated {
            name: "Lamp".into(),
            price_cents: 1999,
            stock,
            seller_id: "s1".into(),
            low_stock_threshold: None,
        })
    }

    fn given(payloads: Vec<Payload>) -> Option<Product> {
        payloads
            .into_iter()
            .enumerate()
            .fold(None, |state, (i, p)| {
                evolve(state, &envelope(i as i64 + 1, p))
            })
    }

    fn admin() -> Actor {
        Actor {
            subject: "root".into(),
            role: Role::Admin,
        }
    }

    /// The whole events decided, payloads included: a wrong `new_stock` fails a test too.
    fn when(state: &Option<Product>, command: Command) -> Result<Vec<Payload>, DomainError> {
        decide(&admin(), state.as_ref(), &command, None, THRESHOLD)
    }

    fn adjusted(delta: i64, new_stock: i64) -> Payload {
        Payload::StockAdjusted(StockAdjusted {
            delta,
            new_stock,
            reason: None,
            previous_stock: new_stock - delta,
        })
    }

    fn warning(stock: i64) -> Payload {
        Payload::LowStockWarning(LowStockWarning {
            stock,
            threshold: THRESHOLD,
        })
    }

    fn adjust(delta: i64) -> Command {
        Command::AdjustStock {
            delta,
            reason: None,
        }
    }

    fn seller(id: &str) -> Actor {
        Actor {
            subject: format!("seller:{id}"),
            role: Role::Seller(id.into()),
        }
    }

    fn create_for(seller_id: &str) -> Command {
        Command::Create {
            name: "Lamp".into(),
            price_cents: 1,
            stock: 1,
            seller_id: seller_id.into(),
            low_stock_threshold: None,
        }
    }

    #[test]
    fn given_a_seller_when_it_creates_for_itself_then_allowed_and_for_another_then_forbidden() {
        assert_eq!(authorize(&seller("s1"), None, &create_for("s1")), Ok(()));
        assert_eq!(
            authorize(&seller("s2"), None, &create_for("s1")),
            Err(DomainError::Forbidden {
                seller: "s2".into(),
                owner: "s1".into()
            })
        );
    }

    #[test]
    fn given_a_product_of_s1_when_s2_changes_it_then_forbidden_and_s1_or_an_admin_may() {
        let state = given(vec![created(10)]);
        let admin = Actor {
            subject: "root".into(),
            role: Role::Admin,
        };
        for command in [adjust(-1), Command::Delete] {
            assert!(matches!(
                authorize(&seller("s2"), state.as_ref(), &command),
                Err(DomainError::Forbidden { .. })
            ));
            assert_eq!(authorize(&seller("s1"), state.as_ref(), &command), Ok(()));
            assert_eq!(authorize(&admin, state.as_ref(), &command), Ok(()));
        }
    }

    #[test]
    fn given_no_product_when_a_seller_changes_it_then_left_to_decide_as_not_found() {
        assert_eq!(authorize(&seller("s2"), None, &adjust(1)), Ok(()));
        assert_eq!(when(&None, adjust(1)), Err(DomainError::NotFound));
    }

    #[test]
    fn given_a_product_of_s1_when_s2_decides_any_command_on_it_then_forbidden_before_any_rule() {
        // decide() itself authorizes: no caller can reach the rules without an actor.
        let state = given(vec![created(10)]);
        for command in [
            adjust(-1),
            adjust(-100),
            Command::Delete,
            Command::Update {
                name: Some("Mine now".into()),
                price_cents: None,
            },
        ] {
            assert!(matches!(
                decide(&seller("s2"), state.as_ref(), &command, Some(99), THRESHOLD),
                Err(DomainError::Forbidden { .. })
            ));
        }
        assert!(matches!(
            decide(&seller("s2"), None, &create_for("s1"), None, THRESHOLD),
            Err(DomainError::Forbidden { .. })
        ));
        assert!(decide(&seller("s1"), state.as_ref(), &adjust(-1), None, THRESHOLD).is_ok());
    }

    #[test]
    fn given_nothing_when_create_then_created() {
        let command = Command::Create {
            name: "Lamp".into(),
            price_cents: 0,
            stock: 0,
            seller_id: "s1".into(),
            low_stock_threshold: None,
        };
        assert_eq!(
            when(&None, command),
            Ok(vec![Payload::ProductCreated(ProductCreated {
                name: "Lamp".into(),
                price_cents: 0,
                stock: 0,
                seller_id: "s1".into(),
                low_stock_threshold: None,
            })])
        );
    }

    #[test]
    fn given_nothing_when_create_with_bad_fields_then_invalid() {
        let base = |name: &str, price: i64, stock: i64, seller: &str| Command::Create {
            name: name.into(),
            price_cents: price,
            stock,
            seller_id: seller.into(),
            low_stock_threshold: None,
        };
        let long_name = "x".repeat(MAX_NAME_CHARS + 1);
        for (command, field) in [
            (base("", 1, 1, "s"), "name"),
            (base("   ", 1, 1, "s"), "name"),
            (base(&long_name, 1, 1, "s"), "name"),
            (base("ok", -1, 1, "s"), "price_cents"),
            (base("ok", 1, -1, "s"), "stock"),
            (base("ok", 1, 1, ""), "seller_id"),
        ] {
            match when(&None, command) {
                Err(DomainError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }
        let max_name = "é".repeat(MAX_NAME_CHARS);
        assert!(
            when(&None, base(&max_name, 1, 1, "s")).is_ok(),
            "200 chars, not bytes"
        );
    }

    #[test]
    fn given_nothing_when_any_other_command_then_not_found() {
        for command in [adjust(1), Command::Delete] {
            assert_eq!(when(&None, command), Err(DomainError::NotFound));
        }
    }

    #[test]
    fn given_created_when_stock_falls_below_threshold_then_adjusted_and_warning() {
        let state = given(vec![created(6)]);
        assert_eq!(
            when(&state, adjust(-2)),
            Ok(vec![adjusted(-2, 4), warning(4)])
        );
    }

    #[test]
    fn given_stock_already_below_threshold_when_it_falls_further_then_no_second_warning() {
        let state = given(vec![created(4)]);
        assert_eq!(when(&state, adjust(-1)), Ok(vec![adjusted(-1, 3)]));
    }

    #[test]
    fn given_stock_exactly_at_threshold_when_it_stays_then_no_warning() {
        let state = given(vec![created(7)]);
        assert_eq!(when(&state, adjust(-2)), Ok(vec![adjusted(-2, 5)]));
    }

    fn threshold_set(threshold: i64) -> Payload {
        Payload::LowStockThresholdSet(LowStockThresholdSet { threshold })
    }

    fn set_threshold(threshold: i64) -> Command {
        Command::SetLowStockThreshold { threshold }
    }

    #[test]
    fn given_an_own_threshold_when_stock_falls_below_it_then_the_warning_names_it() {
        let mut own = created(12);
        if let Payload::ProductCreated(c) = &mut own {
            c.low_stock_threshold = Some(10);
        }
        let state = given(vec![own]);
        assert_eq!(
            when(&state, adjust(-3)),
            Ok(vec![
                adjusted(-3, 9),
                Payload::LowStockWarning(LowStockWarning {
                    stock: 9,
                    threshold: 10
                })
            ])
        );
    }

    #[test]
    fn given_stock_8_when_the_threshold_is_raised_past_it_then_set_and_warning() {
        let state = given(vec![created(8)]);
        assert_eq!(
            when(&state, set_threshold(10)),
            Ok(vec![
                threshold_set(10),
                Payload::LowStockWarning(LowStockWarning {
                    stock: 8,
                    threshold: 10
                })
            ])
        );
        // Lowered, or raised while already low: no new warning.
        assert_eq!(when(&state, set_threshold(3)), Ok(vec![threshold_set(3)]));
        let low = given(vec![created(2)]);
        assert_eq!(when(&low, set_threshold(9)), Ok(vec![threshold_set(9)]));
    }

    #[test]
    fn given_a_threshold_set_then_later_changes_use_it() {
        let state = given(vec![created(30), threshold_set(20)]);
        assert_eq!(state.as_ref().unwrap().low_stock_threshold, Some(20));
        assert_eq!(
            when(&state, adjust(-11)),
            Ok(vec![
                adjusted(-11, 19),
                Payload::LowStockWarning(LowStockWarning {
                    stock: 19,
                    threshold: 20
                })
            ])
        );
    }

    #[test]
    fn thresholds_at_their_limits_pass_and_past_them_are_refused_naming_the_field() {
        let state = given(vec![created(8)]);
        for ok in [0, limits::STOCK_MAX] {
            assert!(when(&state, set_threshold(ok)).is_ok(), "{ok}");
        }
        for bad in [-1, limits::STOCK_MAX + 1, i64::MIN, i64::MAX] {
            let Err(DomainError::Invalid { field, .. }) = when(&state, set_threshold(bad)) else {
                panic!("{bad} accepted")
            };
            assert_eq!(field, "low_stock_threshold");
        }
        let create = Command::Create {
            name: "n".into(),
            price_cents: 1,
            stock: 1,
            seller_id: "s".into(),
            low_stock_threshold: Some(-1),
        };
        assert!(matches!(
            when(&None, create),
            Err(DomainError::Invalid {
                field: "low_stock_threshold",
                ..
            })
        ));
    }

    #[test]
    fn given_stock_2_when_minus_3_then_insufficient_stock() {
        let state = given(vec![created(2)]);
        assert_eq!(
            when(&state, adjust(-3)),
            Err(DomainError::InsufficientStock {
                stock: 2,
                delta: -3
            })
        );
    }

    #[test]
    fn given_zero_or_overflowing_delta_then_invalid() {
        let state = given(vec![created(2)]);
        assert!(matches!(
            when(&state, adjust(0)),
            Err(DomainError::Invalid { .. })
        ));
        assert!(matches!(
            when(&state, adjust(i64::MAX)),
            Err(DomainError::Invalid { .. })
        ));
    }

    #[test]
    fn given_any_state_when_a_field_breaks_a_limit_then_invalid_naming_it() {
        let field = |result: Result<Vec<Payload>, DomainError>| match result {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        };
        let create = |name: &str, price: i64, stock: i64, seller: &str| Command::Create {
            name: name.into(),
            price_cents: price,
            stock,
            seller_id: seller.into(),
            low_stock_threshold: None,
        };
        assert_eq!(field(when(&None, create("lamp\0", 1, 1, "s1"))), "name");
        assert_eq!(
            field(when(&None, create("lamp", 1 << 62, 1, "s1"))),
            "price_cents"
        );
        assert_eq!(
            field(when(&None, create("lamp", 1, 1 << 62, "s1"))),
            "stock"
        );
        assert_eq!(
            field(when(&None, create("lamp", 1, 1, &"s".repeat(4000)))),
            "seller_id"
        );
        let state = given(vec![created(limits::STOCK_MAX)]);
        assert_eq!(
            field(when(&state, adjust(1))),
            "delta",
            "past the stock limit"
        );
        let long_reason = Command::AdjustStock {
            delta: -1,
            reason: Some("r".repeat(500_000)),
        };
        assert_eq!(field(when(&state, long_reason)), "reason");
        // At every bound: accepted, and the events keep every limit.
        let at_bounds = create(
            &"n".repeat(MAX_NAME_CHARS),
            limits::PRICE_CENTS_MAX,
            limits::STOCK_MAX,
            &"s".repeat(limits::SELLER_ID_MAX_CHARS),
        );
        let events = when(&None, at_bounds).unwrap();
        let state = given(events.clone());
        let reason = Command::AdjustStock {
            delta: -limits::STOCK_MAX,
            reason: Some("r".repeat(limits::REASON_MAX_CHARS)),
        };
        for payload in events.into_iter().chain(when(&state, reason).unwrap()) {
            limits::check_envelope(&envelope(1, payload)).unwrap();
        }
    }

    #[test]
    fn given_deleted_when_anything_then_not_found() {
        let state = given(vec![created(2), Payload::ProductDeleted(ProductDeleted {})]);
        assert!(state.as_ref().unwrap().deleted);
        assert_eq!(when(&state, adjust(1)), Err(DomainError::NotFound));
        assert_eq!(when(&state, Command::Delete), Err(DomainError::NotFound));
    }

    #[test]
    fn given_version_2_when_if_match_1_then_mismatch() {
        let state = given(vec![
            created(9),
            Payload::StockAdjusted(StockAdjusted {
                delta: 1,
                new_stock: 10,
                reason: None,
                previous_stock: 9,
            }),
        ]);
        let result = decide(
            &admin(),
            state.as_ref(),
            &Command::Delete,
            Some(1),
            THRESHOLD,
        );
        assert_eq!(
            result,
            Err(DomainError::VersionMismatch {
                expected: 1,
                actual: 2
            })
        );
        assert!(decide(
            &admin(),
            state.as_ref(),
            &Command::Delete,
            Some(2),
            THRESHOLD
        )
        .is_ok());
    }

    #[test]
    fn given_created_when_empty_update_then_invalid_and_partial_update_keeps_the_rest() {
        let state = given(vec![created(2)]);
        let empty = Command::Update {
            name: None,
            price_cents: None,
        };
        assert!(matches!(
            when(&state, empty),
            Err(DomainError::Invalid { .. })
        ));
        let price_only = Command::Update {
            name: None,
            price_cents: Some(5),
        };
        assert_eq!(
            when(&state, price_only),
            Ok(vec![Payload::ProductUpdated(ProductUpdated {
                name: None,
                price_cents: Some(5),
            })])
        );
        assert_eq!(
            when(&state, Command::Delete),
            Ok(vec![Payload::ProductDeleted(ProductDeleted {})])
        );
        let state = given(vec![
            created(2),
            Payload::ProductUpdated(ProductUpdated {
                name: None,
                price_cents: Some(5),
            }),
        ])
        .unwrap();
        assert_eq!(
            (state.name.as_str(), state.price_cents, state.version),
            ("Lamp", 5, 2)
        );
    }
}
