//! Mapping between [`Envelope`] and Avro [`Value`]s.
//!
//! Written out explicitly rather than through apache-avro's serde support: that support
//! serializes Rust enums into unions of records incorrectly (apache/avro-rs#365) and its
//! value resolution picks union branches by matching fields, which would confuse our empty
//! `ProductDeleted` record with any other branch. Here the branch is chosen by *name*, taken
//! from the writer's schema, so old and new schema versions decode correctly.

use apache_avro::types::Value;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event::*;

#[derive(Debug, thiserror::Error)]
pub enum AvroMappingError {
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` has an unexpected type: {found}")]
    WrongType { field: &'static str, found: String },
    #[error("the writer schema has no usable `payload` union")]
    NoPayloadUnion,
    #[error("payload branch {0} is not a known event type")]
    UnknownBranch(String),
}

fn optional<T>(value: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(f(v))),
    }
}

fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// Builds the Avro value of an envelope for the committed schema.
pub fn envelope_to_value(envelope: &Envelope) -> Value {
    let payload = match &envelope.payload {
        Payload::ProductCreated(p) => record(vec![
            ("name", Value::String(p.name.clone())),
            ("price_cents", Value::Long(p.price_cents)),
            ("stock", Value::Long(p.stock)),
            ("seller_id", Value::String(p.seller_id.clone())),
            (
                "low_stock_threshold",
                optional(p.low_stock_threshold, Value::Long),
            ),
        ]),
        Payload::ProductUpdated(p) => record(vec![
            ("name", optional(p.name.clone(), Value::String)),
            ("price_cents", optional(p.price_cents, Value::Long)),
        ]),
        Payload::StockAdjusted(p) => record(vec![
            ("delta", Value::Long(p.delta)),
            ("new_stock", Value::Long(p.new_stock)),
            ("reason", optional(p.reason.clone(), Value::String)),
            (
                "previous_stock",
                optional(Some(p.previous_stock), Value::Long),
            ),
        ]),
        Payload::LowStockWarning(p) => record(vec![
            ("stock", Value::Long(p.stock)),
            ("threshold", Value::Long(p.threshold)),
        ]),
        Payload::ProductDeleted(_) => record(vec![]),
        Payload::LowStockThresholdSet(p) => record(vec![("threshold", Value::Long(p.threshold))]),
    };
    record(vec![
        ("event_id", Value::Uuid(envelope.event_id)),
        ("product_id", Value::String(envelope.product_id.clone())),
        ("version", Value::Long(envelope.version)),
        (
            "occurred_at",
            Value::TimestampMillis(envelope.occurred_at.timestamp_millis()),
        ),
        (
            "correlation_id",
            Value::String(envelope.correlation_id.clone()),
        ),
        (
            "idempotency_key",
            optional(envelope.idempotency_key.clone(), Value::String),
        ),
        (
            "command_index",
            optional(envelope.command_index, Value::Long),
        ),
        (
            "payload",
            Value::Union(
                envelope.payload.event_type().branch_index(),
                Box::new(payload),
            ),
        ),
        ("actor", optional(envelope.actor.clone(), Value::String)),
    ])
}

struct Fields<'a>(&'a [(String, Value)]);

impl<'a> Fields<'a> {
    fn get(&self, field: &'static str) -> Result<&'a Value, AvroMappingError> {
        self.0
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, v)| unwrap_union(v))
            .ok_or(AvroMappingError::MissingField(field))
    }

    fn opt(&self, field: &'static str) -> Option<&'a Value> {
        match self.get(field) {
            Ok(Value::Null) | Err(_) => None,
            Ok(v) => Some(v),
        }
    }

    fn long(&self, field: &'static str) -> Result<i64, AvroMappingError> {
        as_long(field, self.get(field)?)
    }

    fn string(&self, field: &'static str) -> Result<String, AvroMappingError> {
        as_string(field, self.get(field)?)
    }

    fn opt_long(&self, field: &'static str) -> Result<Option<i64>, AvroMappingError> {
        self.opt(field).map(|v| as_long(field, v)).transpose()
    }

    fn opt_string(&self, field: &'static str) -> Result<Option<String>, AvroMappingError> {
        self.opt(field).map(|v| as_string(field, v)).transpose()
    }
}

fn unwrap_union(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => inner,
        other => other,
    }
}

fn wrong(field: &'static str, value: &Value) -> AvroMappingError {
    AvroMappingError::WrongType {
        field,
        found: format!("{value:?}").chars().take(60).collect(),
    }
}

fn as_long(field: &'static str, value: &Value) -> Result<i64, AvroMappingError> {
    match value {
        Value::Long(v) | Value::TimestampMillis(v) => Ok(*v),
        Value::Int(v) => Ok(i64::from(*v)),
        other => Err(wrong(field, other)),
    }
}

fn as_string(field: &'static str, value: &Value) -> Result<String, AvroMappingError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Uuid(u) => Ok(u.to_string()),
        other => Err(wrong(field, other)),
    }
}

fn records(value: &Value) -> Result<&[(String, Value)], AvroMappingError> {
    match value {
        Value::Record(fields) => Ok(fields),
        other => Err(wrong("record", other)),
    }
}

/// Reads an envelope decoded with a writer schema whose payload branch, by name, is
/// `event_type`. Only through [`crate::read::read_envelope`], which resolves the branch and
/// checks first that nothing of the value is unknown to this build.
pub(crate) fn envelope_from_value(
    value: &Value,
    event_type: EventType,
) -> Result<Envelope, AvroMappingError> {
    let fields = Fields(records(value)?);
    let event_id = match fields.get("event_id")? {
        Value::Uuid(u) => *u,
        Value::String(s) => Uuid::parse_str(s).map_err(|_| wrong("event_id", &Value::Null))?,
        other => return Err(wrong("event_id", other)),
    };
    let millis = fields.long("occurred_at")?;
    let occurred_at: DateTime<Utc> = DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| wrong("occurred_at", &Value::Long(millis)))?;
    let inner = match fields.0.iter().find(|(n, _)| n == "payload") {
        Some((_, Value::Union(_, inner))) => inner.as_ref(),
        Some((_, other)) => return Err(wrong("payload", other)),
        None => return Err(AvroMappingError::MissingField("payload")),
    };
    let p = Fields(records(inner)?);
    let payload = match event_type {
        EventType::ProductCreated => Payload::ProductCreated(ProductCreated {
            name: p.string("name")?,
            price_cents: p.long("price_cents")?,
            stock: p.long("stock")?,
            seller_id: p.string("seller_id")?,
            // Absent from writer schemas before 2026-12-07: the default threshold.
            low_stock_threshold: p.opt_long("low_stock_threshold")?,
        }),
        EventType::ProductUpdated => Payload::ProductUpdated(ProductUpdated {
            name: p.opt_string("name")?,
            price_cents: p.opt_long("price_cents")?,
        }),
        EventType::StockAdjusted => {
            let (delta, new_stock) = (p.long("delta")?, p.long("new_stock")?);
            let previous_stock = match p.opt_long("previous_stock")? {
                Some(previous) => previous,
                None => crate::read::upcast::previous_stock(delta, new_stock)?,
            };
            Payload::StockAdjusted(StockAdjusted {
                delta,
                new_stock,
                reason: p.opt_string("reason")?,
                previous_stock,
            })
        }
        EventType::LowStockWarning => Payload::LowStockWarning(LowStockWarning {
            stock: p.long("stock")?,
            threshold: p.long("threshold")?,
        }),
        EventType::ProductDeleted => Payload::ProductDeleted(ProductDeleted {}),
        EventType::LowStockThresholdSet => Payload::LowStockThresholdSet(LowStockThresholdSet {
            threshold: p.long("threshold")?,
        }),
    };
    Ok(Envelope {
        event_id,
        product_id: fields.string("product_id")?,
        version: fields.long("version")?,
        occurred_at,
        correlation_id: fields.string("correlation_id")?,
        idempotency_key: fields.opt_string("idempotency_key")?,
        command_index: fields.opt_long("command_index")?,
        payload,
        // Absent from writer schemas older than authentication.
        actor: fields.opt_string("actor")?,
    })
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::*;
    use apache_avro::schema::Schema;
    // The one-shot datum helpers are deprecated in favour of reader/writer builders; they are
    // the plainest way to get raw Avro bytes in a test.
    use apache_avro::{from_avro_datum, to_avro_datum};

    fn sample(payload: Payload) -> Envelope {
        Envelope {
            actor: None,
            event_id: Uuid::new_v4(),
            product_id: "p-1".into(),
            version: 3,
            occurred_at: DateTime::from_timestamp_millis(1_760_000_000_123).unwrap(),
            correlation_id: "c-1".into(),
            idempotency_key: Some("k".into()),
            command_index: Some(0),
            payload,
        }
    }

    #[test]
    fn the_event_types_are_the_schemas_union_in_order() {
        let schema = Schema::parse_str(crate::PRODUCTS_VALUE_SCHEMA).unwrap();
        let branches = crate::read::WriterSchema::of(&schema)
            .unwrap()
            .event_types();
        let listed: Vec<Option<EventType>> = EventType::ALL.iter().copied().map(Some).collect();
        assert_eq!(
            branches, listed,
            "one event type per branch, in the union's order"
        );
        for (index, event_type) in EventType::ALL.iter().enumerate() {
            assert_eq!(event_type.branch_index(), index as u32);
            assert_eq!(EventType::parse(event_type.as_str()), Some(*event_type));
            assert_eq!(
                EventType::parse(&format!("foldline.{event_type}")),
                Some(*event_type)
            );
        }
        assert_eq!(EventType::parse("NoSuchEvent"), None);
    }

    #[test]
    fn every_payload_round_trips_through_avro_binary() {
        let schema = Schema::parse_str(crate::PRODUCTS_VALUE_SCHEMA).unwrap();
        let writer = crate::read::WriterSchema::of(&schema).unwrap();
        let payloads = vec![
            Payload::ProductCreated(ProductCreated {
                name: "Desk".into(),
                price_cents: 12_500,
                stock: 7,
                seller_id: "s-1".into(),
                low_stock_threshold: None,
            }),
            Payload::ProductUpdated(ProductUpdated {
                name: None,
                price_cents: Some(1),
            }),
            Payload::StockAdjusted(StockAdjusted {
                delta: -3,
                new_stock: 4,
                reason: None,
                previous_stock: 7,
            }),
            Payload::LowStockWarning(LowStockWarning {
                stock: 4,
                threshold: 5,
            }),
            Payload::ProductDeleted(ProductDeleted {}),
            Payload::LowStockThresholdSet(LowStockThresholdSet { threshold: 12 }),
        ];
        for payload in payloads {
            let envelope = sample(payload);
            let bytes = to_avro_datum(&schema, envelope_to_value(&envelope)).unwrap();
            let value = from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap();
            assert_eq!(
                crate::read::read_envelope(&value, &writer, None).unwrap(),
                envelope
            );
        }
    }

    #[test]
    fn branches_are_named_by_the_writer_schema_not_by_position() {
        // A writer whose union lists ProductDeleted first: index 0 must still decode as
        // ProductDeleted, not as ProductCreated (the committed schema's index 0).
        let mut json: serde_json::Value =
            serde_json::from_str(crate::PRODUCTS_VALUE_SCHEMA).unwrap();
        let union = json["fields"][7]["type"].as_array_mut().unwrap();
        let at = union
            .iter()
            .position(|b| b["name"] == "ProductDeleted")
            .unwrap();
        let deleted = union.remove(at);
        union.insert(0, deleted);
        let writer = Schema::parse_str(&json.to_string()).unwrap();
        let branches = crate::read::WriterSchema::of(&writer).unwrap();
        let envelope = sample(Payload::ProductDeleted(ProductDeleted {}));
        let mut value = envelope_to_value(&envelope);
        if let Value::Record(fields) = &mut value {
            fields[7].1 = Value::Union(0, Box::new(Value::Record(vec![])));
        }
        let bytes = to_avro_datum(&writer, value).unwrap();
        let decoded = from_avro_datum(&writer, &mut bytes.as_slice(), None).unwrap();
        assert_eq!(
            crate::read::read_envelope(&decoded, &branches, None).unwrap(),
            envelope
        );
    }

    #[test]
    fn json_view_has_event_type_and_payload() {
        let envelope = sample(Payload::LowStockWarning(LowStockWarning {
            stock: 1,
            threshold: 5,
        }));
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(json["event_type"], "LowStockWarning");
        assert_eq!(json["payload"]["threshold"], 5);
        assert_eq!(json["occurred_at"], 1_760_000_000_123_i64);
    }
}
