//! The limits of every field of an event: the one place that says what the write API accepts,
//! chosen so that every sink can hold every accepted event (see the README, "Limits").
//!
//! - Text: no NUL anywhere (PostgreSQL's `text` refuses it), no control characters in names
//!   and identifiers, a bounded length in characters (a character is at most 4 bytes in
//!   UTF-8, so the byte size is bounded too).
//! - Identifiers (`seller_id`, product ids) are short and plain ASCII: they are keys in
//!   PostgreSQL indexes (a B-tree row holds at most ~2.7 kB) and DynamoDB keys (≤ 2,048 bytes).
//! - Numbers: `price_cents` × `stock` of one product must fit a 64-bit integer with room for
//!   thousands of such products in one seller's totals (the read model keeps
//!   `stock_value_cents`, a sum of those products, in a `bigint`): 10^8 × 10^7 = 10^15, and
//!   `i64::MAX` ≈ 9.2 × 10^18.
//! - The largest event these allow is a few kilobytes: far below the broker's message size
//!   (1 MB) and DynamoDB's item size (400 KB), so one request can never make a transaction or
//!   an item too big.
//!
//! Consumers do not rely on these limits: the log may hold older events, or events written by
//! something else; a record a sink cannot apply parks its product (see the consumer runtime).

use crate::{Envelope, Payload};

/// Product names: 1–200 characters, not blank, no control characters.
pub const NAME_MAX_CHARS: usize = 200;
/// Seller ids: 1–64 characters of `A–Z a–z 0–9 . _ - : @`.
pub const SELLER_ID_MAX_CHARS: usize = 64;
/// Product ids (assigned by the producer, UUIDs): at most 64 characters of the seller-id set.
pub const PRODUCT_ID_MAX_CHARS: usize = 64;
/// The optional reason of a stock change: up to 500 characters; tab and newline are allowed,
/// no other control character.
pub const REASON_MAX_CHARS: usize = 500;
/// Prices in cents: 0 to 100,000,000 (one million in the currency's main unit).
pub const PRICE_CENTS_MAX: i64 = 100_000_000;
/// Stock: 0 to 10,000,000 units; a stock change moves it by at most that much and may not
/// take it past either end.
pub const STOCK_MAX: i64 = 10_000_000;
/// Idempotency keys: 1–255 visible ASCII characters.
pub const IDEMPOTENCY_KEY_MAX_CHARS: usize = 255;
/// The actor (the token's `sub`): 1–255 characters, no control characters.
pub const ACTOR_MAX_CHARS: usize = 255;
/// Correlation ids (`X-Correlation-ID`): 1–128 visible ASCII characters.
pub const CORRELATION_ID_MAX_CHARS: usize = 128;

/// A field past its limit: which field, and why, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Violation {
    pub field: &'static str,
    pub reason: String,
}

fn violation(field: &'static str, reason: impl Into<String>) -> Violation {
    Violation {
        field,
        reason: reason.into(),
    }
}

fn check_length(field: &'static str, value: &str, max: usize) -> Result<(), Violation> {
    if value.is_empty() {
        return Err(violation(field, "must not be empty"));
    }
    // Count no further than one past the limit: a megabyte of text is not walked twice.
    let chars = value.chars().take(max + 1).count();
    if chars > max {
        return Err(violation(
            field,
            format!("must be at most {max} characters, got more"),
        ));
    }
    Ok(())
}

fn first_control(value: &str, allowed: &[char]) -> Option<(usize, char)> {
    value
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !allowed.contains(c))
}

fn no_control(field: &'static str, value: &str, allowed: &[char]) -> Result<(), Violation> {
    match first_control(value, allowed) {
        None => Ok(()),
        Some((at, c)) => Err(violation(
            field,
            format!(
                "must not contain control characters, found U+{:04X} at character {at}",
                c as u32
            ),
        )),
    }
}

/// A product name.
pub fn check_name(value: &str) -> Result<(), Violation> {
    check_length("name", value, NAME_MAX_CHARS)?;
    if value.trim().is_empty() {
        return Err(violation("name", "must not be blank"));
    }
    no_control("name", value, &[])
}

fn identifier(field: &'static str, value: &str, max: usize) -> Result<(), Violation> {
    check_length(field, value, max)?;
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@')))
    {
        None => Ok(()),
        Some(c) => Err(violation(
            field,
            format!("may hold only A-Z a-z 0-9 . _ - : @, found {c:?}"),
        )),
    }
}

/// A seller id.
pub fn check_seller_id(value: &str) -> Result<(), Violation> {
    identifier("seller_id", value, SELLER_ID_MAX_CHARS)
}

/// A product id (of an event; the producer assigns them).
pub fn check_product_id(value: &str) -> Result<(), Violation> {
    identifier("id", value, PRODUCT_ID_MAX_CHARS)
}

/// The reason of a stock change (when given).
pub fn check_reason(value: &str) -> Result<(), Violation> {
    let chars = value.chars().take(REASON_MAX_CHARS + 1).count();
    if chars > REASON_MAX_CHARS {
        return Err(violation(
            "reason",
            format!("must be at most {REASON_MAX_CHARS} characters, got more"),
        ));
    }
    no_control("reason", value, &['\n', '\t'])
}

fn range(field: &'static str, value: i64, min: i64, max: i64) -> Result<(), Violation> {
    if value < min || value > max {
        return Err(violation(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

pub fn check_price_cents(value: i64) -> Result<(), Violation> {
    range("price_cents", value, 0, PRICE_CENTS_MAX)
}

pub fn check_stock(value: i64) -> Result<(), Violation> {
    range("stock", value, 0, STOCK_MAX)
}

/// A product's own low-stock threshold: a stock level, 0 (never low) to [`STOCK_MAX`].
pub fn check_low_stock_threshold(value: i64) -> Result<(), Violation> {
    range("low_stock_threshold", value, 0, STOCK_MAX)
}

/// A stock change: not zero, at most [`STOCK_MAX`] either way.
pub fn check_delta(value: i64) -> Result<(), Violation> {
    if value == 0 {
        return Err(violation("delta", "must not be zero"));
    }
    range("delta", value, -STOCK_MAX, STOCK_MAX)
}

/// The subject of a writer's token, which every event carries as `actor`.
pub fn check_actor(value: &str) -> Result<(), Violation> {
    check_length("sub", value, ACTOR_MAX_CHARS)?;
    no_control("sub", value, &[])
}

fn visible_ascii(field: &'static str, value: &str, max: usize) -> Result<(), Violation> {
    check_length(field, value, max)?;
    if !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(violation(field, "must be visible ASCII"));
    }
    Ok(())
}

pub fn check_idempotency_key(value: &str) -> Result<(), Violation> {
    visible_ascii("Idempotency-Key", value, IDEMPOTENCY_KEY_MAX_CHARS)
}

pub fn check_correlation_id(value: &str) -> Result<(), Violation> {
    visible_ascii("X-Correlation-ID", value, CORRELATION_ID_MAX_CHARS)
}

/// Whether a whole event keeps every limit: what the producer appends always does (a test
/// checks it); a consumer may meet events that do not.
pub fn check_envelope(event: &Envelope) -> Result<(), Violation> {
    check_product_id(&event.product_id)?;
    check_correlation_id(&event.correlation_id)?;
    if let Some(key) = &event.idempotency_key {
        check_idempotency_key(key)?;
    }
    if let Some(actor) = &event.actor {
        check_actor(actor)?;
    }
    match &event.payload {
        Payload::ProductCreated(p) => {
            check_name(&p.name)?;
            check_price_cents(p.price_cents)?;
            check_stock(p.stock)?;
            check_seller_id(&p.seller_id)?;
            p.low_stock_threshold
                .map_or(Ok(()), check_low_stock_threshold)
        }
        Payload::ProductUpdated(p) => {
            if let Some(name) = &p.name {
                check_name(name)?;
            }
            p.price_cents.map_or(Ok(()), check_price_cents)
        }
        Payload::StockAdjusted(p) => {
            check_delta(p.delta)?;
            check_stock(p.new_stock)?;
            check_stock(p.previous_stock)?;
            p.reason.as_deref().map_or(Ok(()), check_reason)
        }
        Payload::LowStockWarning(p) => check_stock(p.stock),
        Payload::ProductDeleted(_) => Ok(()),
        Payload::LowStockThresholdSet(p) => check_low_stock_threshold(p.threshold),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_at_the_limit_pass_and_one_past_it_fail() {
        assert!(check_name(&"é".repeat(NAME_MAX_CHARS)).is_ok());
        let error = check_name(&"é".repeat(NAME_MAX_CHARS + 1)).unwrap_err();
        assert_eq!(error.field, "name");
        assert!(check_name("").is_err());
        assert!(check_name("   ").is_err());
    }

    #[test]
    fn control_characters_are_refused_where_text_is_a_name_or_an_identifier() {
        assert!(check_name("lamp\0").unwrap_err().reason.contains("U+0000"));
        assert!(check_name("lamp\nshade").is_err());
        assert!(check_name("lamp\u{85}").is_err(), "C1 controls too");
        assert!(check_reason("line one\nline two\ttabbed").is_ok());
        assert!(check_reason("nul\0").is_err());
        assert!(check_reason("").is_ok(), "an empty reason is allowed");
        assert!(check_seller_id("seller-1").is_ok());
        assert!(check_seller_id("a.b_c-d:e@f").is_ok());
        assert!(check_seller_id("seller 1").is_err());
        assert!(check_seller_id("sellér").is_err());
        assert!(check_seller_id(&"s".repeat(SELLER_ID_MAX_CHARS)).is_ok());
        assert!(check_seller_id(&"s".repeat(SELLER_ID_MAX_CHARS + 1)).is_err());
    }

    #[test]
    fn numbers_are_bounded_so_a_sellers_totals_fit_with_room() {
        assert!(check_price_cents(PRICE_CENTS_MAX).is_ok());
        assert!(check_price_cents(PRICE_CENTS_MAX + 1).is_err());
        assert!(check_price_cents(-1).is_err());
        assert!(check_stock(STOCK_MAX).is_ok());
        assert!(check_stock(STOCK_MAX + 1).is_err());
        assert!(check_delta(-STOCK_MAX).is_ok());
        assert!(check_delta(-STOCK_MAX - 1).is_err());
        assert!(check_delta(0).is_err());
        assert!(check_delta(i64::MIN).is_err());
        // One product at both maxima, times a thousand products, still fits a bigint.
        assert!((PRICE_CENTS_MAX * STOCK_MAX).checked_mul(1_000).is_some());
    }

    #[test]
    fn reasons_are_bounded() {
        assert!(check_reason(&"r".repeat(REASON_MAX_CHARS)).is_ok());
        assert_eq!(
            check_reason(&"r".repeat(REASON_MAX_CHARS + 1))
                .unwrap_err()
                .field,
            "reason"
        );
    }
}
