//! The one place a record of any schema version becomes the current [`Envelope`].
//!
//! Every read path — the live consumers, the producer's tail read and snapshot load, replay
//! and rebuild, the archive's restore and rebuild, parked-event retry, dead-letter replay,
//! `foldline verify` and `foldline topic consume` — decodes through [`read_envelope`] (the
//! wire codec and the archive reader call it), so none can apply an evolution the others miss
//! (the bug Marten, cqrs-es and Axon each had: upcasters applied on some paths only).
//!
//! Reading is by the *writer's* schema (the record's schema id, or the schema embedded in an
//! archive file): payload branches are matched by name, then the event is upcast to the
//! current shape (see [`crate::avro`], where each upcast is written beside the field it fills).
//!
//! A record this build cannot read without losing something — an event type it does not know,
//! or a field it does not know that holds a value — is [`ReadError::Newer`]: written by a
//! newer schema. Consumers park its product (or wait, where they cannot park) instead of
//! dropping it; after their upgrade `foldline parked retry` applies it. A field it does not
//! know that holds null (an optional field left at its default) loses nothing and is ignored.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::schema::Schema;
use apache_avro::types::Value;

use crate::avro::{envelope_from_value, AvroMappingError};
use crate::event::{Envelope, EventType};
use crate::PRODUCTS_VALUE_SCHEMA;

/// The upcasts: how an event written under an older schema gets a value the current shape
/// has and it did not, derived from what it held. Called by the Avro mapping (`crate::avro`)
/// where the field is read, so every read path applies them.
pub(crate) mod upcast {
    use crate::avro::AvroMappingError;

    /// `StockAdjusted.previous_stock` (schema of 2026-12-07): the stock before the change,
    /// which the event always implied as `new_stock - delta`.
    pub fn previous_stock(delta: i64, new_stock: i64) -> Result<i64, AvroMappingError> {
        new_stock
            .checked_sub(delta)
            .ok_or(AvroMappingError::WrongType {
                field: "previous_stock",
                found: format!("new_stock {new_stock} - delta {delta} overflows"),
            })
    }
}

/// The upcasts of the Avro path, applied to a payload stored as JSON.
fn upcast_json(event_type: &str, stored: &serde_json::Value) -> serde_json::Value {
    let mut payload = stored.clone();
    if EventType::parse(event_type) == Some(EventType::StockAdjusted) {
        if let Some(fields) = payload.as_object_mut() {
            let missing = fields.get("previous_stock").is_none_or(|v| v.is_null());
            let long = |name: &str| fields.get(name).and_then(serde_json::Value::as_i64);
            if let (true, Some(delta), Some(new_stock)) =
                (missing, long("delta"), long("new_stock"))
            {
                if let Ok(previous) = upcast::previous_stock(delta, new_stock) {
                    fields.insert("previous_stock".into(), previous.into());
                }
            }
        }
    }
    payload
}

/// The payload of type `event_type` stored as JSON by any earlier version (the history's
/// `payload`, the recent events' `data`), read as the current [`Payload`](crate::Payload):
/// the same upcasts as the Avro path, and optional fields added since at their defaults.
pub fn payload_from_json(
    event_type: &str,
    stored: &serde_json::Value,
) -> Result<crate::Payload, serde_json::Error> {
    serde_json::from_value(serde_json::json!({
        "event_type": event_type,
        "payload": upcast_json(event_type, stored),
    }))
}

/// A payload stored as JSON by any earlier version, as the current version writes it (so
/// payloads stored by different versions compare equal when they hold the same event). A
/// type this build does not know is returned as stored.
pub fn current_payload_json(event_type: &str, stored: &serde_json::Value) -> serde_json::Value {
    match payload_from_json(event_type, stored) {
        Ok(payload) => {
            serde_json::from_str(&payload.fields_json()).unwrap_or_else(|_| stored.clone())
        }
        Err(_) => stored.clone(),
    }
}

/// One branch of a writer schema's `payload` union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// The record's short name.
    pub name: String,
    /// The event type of that name, when this build knows it.
    pub event_type: Option<EventType>,
}

/// What this build knows of one writer schema: its payload branches, by name and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterSchema {
    pub branches: Vec<Branch>,
}

impl WriterSchema {
    /// Reads the `payload` union of the envelope schema `writer`.
    pub fn of(writer: &Schema) -> Result<WriterSchema, AvroMappingError> {
        let Schema::Record(record) = writer else {
            return Err(AvroMappingError::NoPayloadUnion);
        };
        let field = record
            .fields
            .iter()
            .find(|f| f.name == "payload")
            .ok_or(AvroMappingError::NoPayloadUnion)?;
        let Schema::Union(union) = &field.schema else {
            return Err(AvroMappingError::NoPayloadUnion);
        };
        let branches = union
            .variants()
            .iter()
            .map(|variant| {
                let name = variant
                    .name()
                    .map(|n| n.name().to_owned())
                    .unwrap_or_default();
                Branch {
                    event_type: EventType::parse(&name),
                    name,
                }
            })
            .collect();
        Ok(WriterSchema { branches })
    }

    /// The event type of each branch (`None` where this build does not know it).
    pub fn event_types(&self) -> Vec<Option<EventType>> {
        self.branches.iter().map(|b| b.event_type).collect()
    }
}

/// An event this build cannot read in full: what is known of it, for parking it and for
/// showing it as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct NewerEvent {
    pub event_id: uuid::Uuid,
    pub product_id: String,
    pub version: i64,
    /// The writer's name of its type (possibly one this build does not know).
    pub event_type: String,
    /// What this build does not know, e.g. "event type `X`" or "field `f` of `T`".
    pub unknown: String,
    /// The writer's schema id, when read from the topic.
    pub schema_id: Option<u32>,
    /// The event as JSON in the shape of [`Envelope`]'s (`event_type`, `payload`), every
    /// field as written: for views that show events they do not understand (SSE, the CLI).
    pub json: serde_json::Value,
}

impl std::fmt::Display for NewerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "written by a newer schema")?;
        if let Some(id) = self.schema_id {
            write!(f, " (id {id})")?;
        }
        write!(
            f,
            ": {} is not known to this build; upgrade it, then retry the parked product",
            self.unknown
        )
    }
}

/// Why a decoded value is not a current envelope.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Written by a newer schema: readable after an upgrade, never to be dropped.
    #[error("{0}")]
    Newer(Box<NewerEvent>),
    /// Not a valid envelope of any version.
    #[error(transparent)]
    Bad(#[from] AvroMappingError),
}

/// The field names of each record of the schema this build was compiled with.
struct Known {
    envelope: Vec<String>,
    payloads: HashMap<EventType, Vec<String>>,
}

static KNOWN: LazyLock<Known> = LazyLock::new(|| {
    let schema = Schema::parse_str(PRODUCTS_VALUE_SCHEMA).expect("the committed schema parses");
    let Schema::Record(envelope) = &schema else {
        unreachable!("the envelope is a record")
    };
    let mut payloads = HashMap::new();
    for field in &envelope.fields {
        if let Schema::Union(union) = &field.schema {
            for variant in union.variants() {
                if let (Schema::Record(record), Some(name)) = (variant, variant.name()) {
                    if let Some(event_type) = EventType::parse(name.name()) {
                        let names = record.fields.iter().map(|f| f.name.clone()).collect();
                        payloads.insert(event_type, names);
                    }
                }
            }
        }
    }
    Known {
        envelope: envelope.fields.iter().map(|f| f.name.clone()).collect(),
        payloads,
    }
});

/// The first field of `fields` not named in `known` that holds something other than null.
fn unknown_with_value<'a>(fields: &'a [(String, Value)], known: &[String]) -> Option<&'a str> {
    fields
        .iter()
        .find(|(name, value)| !known.contains(name) && !is_null(value))
        .map(|(name, _)| name.as_str())
}

fn is_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Union(_, inner) => is_null(inner),
        _ => false,
    }
}

/// Reads `value`, decoded with the writer schema `writer` (whose id is `schema_id` when it
/// came from the registry), as the current [`Envelope`], old versions upcast.
pub fn read_envelope(
    value: &Value,
    writer: &WriterSchema,
    schema_id: Option<u32>,
) -> Result<Envelope, ReadError> {
    let Value::Record(fields) = value else {
        return Err(AvroMappingError::WrongType {
            field: "envelope",
            found: "not a record".into(),
        }
        .into());
    };
    let (index, payload) = match fields.iter().find(|(n, _)| n == "payload") {
        Some((_, Value::Union(index, inner))) => (*index as usize, inner.as_ref()),
        _ => return Err(AvroMappingError::MissingField("payload").into()),
    };
    let branch = writer
        .branches
        .get(index)
        .ok_or_else(|| AvroMappingError::UnknownBranch(index.to_string()))?;
    let unknown = match branch.event_type {
        None => Some(format!("event type `{}`", branch.name)),
        Some(event_type) => {
            let in_payload = match payload {
                Value::Record(payload_fields) => {
                    let known = KNOWN
                        .payloads
                        .get(&event_type)
                        .map_or(&[][..], Vec::as_slice);
                    unknown_with_value(payload_fields, known)
                        .map(|f| format!("field `{f}` of `{}`", branch.name))
                }
                _ => None,
            };
            in_payload.or_else(|| {
                unknown_with_value(fields, &KNOWN.envelope).map(|f| format!("envelope field `{f}`"))
            })
        }
    };
    match (unknown, branch.event_type) {
        (None, Some(event_type)) => Ok(envelope_from_value(value, event_type)?),
        (unknown, _) => {
            let unknown = unknown.unwrap_or_else(|| format!("event type `{}`", branch.name));
            let event = newer(fields, payload, branch, unknown, schema_id)?;
            Err(ReadError::Newer(Box::new(event)))
        }
    }
}

/// What a consumer can know of an event it cannot read in full.
fn newer(
    fields: &[(String, Value)],
    payload: &Value,
    branch: &Branch,
    unknown: String,
    schema_id: Option<u32>,
) -> Result<NewerEvent, AvroMappingError> {
    let field = |name: &'static str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or(AvroMappingError::MissingField(name))
    };
    let event_id = match field("event_id")? {
        Value::Uuid(u) => *u,
        Value::String(s) => uuid::Uuid::parse_str(s).map_err(|_| AvroMappingError::WrongType {
            field: "event_id",
            found: s.chars().take(60).collect(),
        })?,
        other => {
            return Err(AvroMappingError::WrongType {
                field: "event_id",
                found: format!("{other:?}"),
            })
        }
    };
    let product_id = match field("product_id")? {
        Value::String(s) => s.clone(),
        other => {
            return Err(AvroMappingError::WrongType {
                field: "product_id",
                found: format!("{other:?}"),
            })
        }
    };
    let version = match field("version")? {
        Value::Long(v) => *v,
        other => {
            return Err(AvroMappingError::WrongType {
                field: "version",
                found: format!("{other:?}"),
            })
        }
    };
    let json_of = |value: &Value| {
        serde_json::Value::try_from(value.clone()).unwrap_or(serde_json::Value::Null)
    };
    let mut json = serde_json::Map::new();
    for (name, value) in fields {
        if name != "payload" {
            json.insert(name.clone(), json_of(value));
        }
    }
    json.insert("event_type".into(), branch.name.clone().into());
    json.insert("payload".into(), json_of(payload));
    Ok(NewerEvent {
        event_id,
        product_id,
        version,
        event_type: branch.name.clone(),
        unknown,
        schema_id,
        json: serde_json::Value::Object(json),
    })
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::*;
    use crate::avro::envelope_to_value;
    use crate::event::{Payload, ProductCreated, ProductDeleted};
    use apache_avro::{from_avro_datum, to_avro_datum};

    fn sample(payload: Payload) -> Envelope {
        Envelope {
            actor: Some("tests".into()),
            event_id: uuid::Uuid::new_v4(),
            product_id: "p-9".into(),
            version: 4,
            occurred_at: chrono::DateTime::from_timestamp_millis(1_760_000_000_000).unwrap(),
            correlation_id: "c".into(),
            idempotency_key: None,
            command_index: Some(0),
            payload,
        }
    }

    /// The committed schema as a later version might extend it: a new event type appended to
    /// the union and a new optional field on `ProductCreated`.
    fn future_schema() -> Schema {
        let mut json: serde_json::Value = serde_json::from_str(PRODUCTS_VALUE_SCHEMA).unwrap();
        let fields = json["fields"].as_array_mut().unwrap();
        let payload = fields.iter_mut().find(|f| f["name"] == "payload").unwrap();
        let union = payload["type"].as_array_mut().unwrap();
        union[0]["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                {"name": "gift_wrap", "type": ["null", "boolean"], "default": null}
            ));
        union.push(serde_json::json!({"type": "record", "name": "FutureEvent",
            "fields": [{"name": "x", "type": "long"}]}));
        Schema::parse_str(&json.to_string()).unwrap()
    }

    /// `event` written with the future schema, `gift_wrap` set to `wrap` when created.
    fn written_by_future(event: &Envelope, wrap: Option<bool>) -> Value {
        let schema = future_schema();
        let mut value = envelope_to_value(event);
        if let Value::Record(fields) = &mut value {
            let (_, Value::Union(branch, payload)) = &mut fields[7] else {
                unreachable!()
            };
            if let (0, Value::Record(created)) = (*branch, payload.as_mut()) {
                let wrap = match wrap {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(b) => Value::Union(1, Box::new(Value::Boolean(b))),
                };
                created.push(("gift_wrap".into(), wrap));
            }
        }
        let bytes = to_avro_datum(&schema, value).unwrap();
        from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap()
    }

    fn created() -> Payload {
        Payload::ProductCreated(ProductCreated {
            name: "Lamp".into(),
            price_cents: 100,
            stock: 3,
            seller_id: "s".into(),
            low_stock_threshold: None,
        })
    }

    #[test]
    fn given_a_payload_stored_as_json_before_previous_stock_then_it_reads_upcast() {
        let stored = serde_json::json!({"delta": -3, "new_stock": 9, "reason": null});
        let current = current_payload_json("StockAdjusted", &stored);
        assert_eq!(current["previous_stock"], 12);
        let payload = payload_from_json("StockAdjusted", &stored).unwrap();
        assert_eq!(
            payload,
            Payload::StockAdjusted(crate::StockAdjusted {
                delta: -3,
                new_stock: 9,
                reason: None,
                previous_stock: 12,
            })
        );
        // Written by the current version: kept as it is.
        let written =
            serde_json::json!({"delta": 1, "new_stock": 5, "reason": null, "previous_stock": 4});
        assert_eq!(current_payload_json("StockAdjusted", &written), written);
        // An optional field added since: at its default, so shapes of two versions compare.
        let created =
            serde_json::json!({"name": "n", "price_cents": 1, "stock": 2, "seller_id": "s"});
        assert_eq!(
            current_payload_json("ProductCreated", &created)["low_stock_threshold"],
            serde_json::Value::Null
        );
        assert!(current_payload_json("ProductCreated", &created)
            .as_object()
            .unwrap()
            .contains_key("low_stock_threshold"));
        // Unknown to this build: as stored.
        let future = serde_json::json!({"note": "x"});
        assert_eq!(current_payload_json("FutureEvent", &future), future);
    }

    #[test]
    fn given_a_stock_adjusted_of_the_first_schema_then_previous_stock_is_upcast() {
        let old = Schema::parse_str(&git_free_first_schema()).unwrap();
        let writer = WriterSchema::of(&old).unwrap();
        let index = writer
            .branches
            .iter()
            .position(|b| b.name == "StockAdjusted")
            .unwrap();
        let mut value = envelope_to_value(&sample(created()));
        if let Value::Record(fields) = &mut value {
            fields.retain(|(name, _)| name != "actor");
            let adjusted = Value::Record(vec![
                ("delta".into(), Value::Long(-2)),
                ("new_stock".into(), Value::Long(5)),
                ("reason".into(), Value::Union(0, Box::new(Value::Null))),
            ]);
            let payload = fields.iter_mut().find(|(n, _)| n == "payload").unwrap();
            payload.1 = Value::Union(index as u32, Box::new(adjusted));
        }
        let bytes = to_avro_datum(&old, value).unwrap();
        let value = from_avro_datum(&old, &mut bytes.as_slice(), None).unwrap();
        let event = read_envelope(&value, &writer, Some(1)).unwrap();
        let Payload::StockAdjusted(adjusted) = event.payload else {
            panic!("{event:?}")
        };
        assert_eq!(adjusted.previous_stock, 7, "new_stock - delta");
    }

    /// The envelope as it was before 2026-12-07 and before `actor`: no threshold, no
    /// `previous_stock`, five event types.
    fn git_free_first_schema() -> String {
        let mut json: serde_json::Value = serde_json::from_str(PRODUCTS_VALUE_SCHEMA).unwrap();
        let fields = json["fields"].as_array_mut().unwrap();
        fields.retain(|f| f["name"] != "actor");
        let payload = fields.iter_mut().find(|f| f["name"] == "payload").unwrap();
        let union = payload["type"].as_array_mut().unwrap();
        union.retain(|b| b["name"] != "LowStockThresholdSet");
        for branch in union.iter_mut() {
            let drop = ["low_stock_threshold", "previous_stock"];
            branch["fields"]
                .as_array_mut()
                .unwrap()
                .retain(|f| !drop.contains(&f["name"].as_str().unwrap()));
        }
        json.to_string()
    }

    #[test]
    fn given_a_newer_writer_when_its_event_uses_only_what_this_build_knows_then_it_reads() {
        let writer = WriterSchema::of(&future_schema()).unwrap();
        assert_eq!(writer.branches.last().unwrap().name, "FutureEvent");
        assert_eq!(writer.branches.last().unwrap().event_type, None);
        for event in [
            sample(created()),
            sample(Payload::ProductDeleted(ProductDeleted {})),
        ] {
            let value = written_by_future(&event, None);
            assert_eq!(read_envelope(&value, &writer, Some(7)).unwrap(), event);
        }
    }

    #[test]
    fn given_a_field_this_build_does_not_know_holding_a_value_then_newer_not_dropped() {
        let writer = WriterSchema::of(&future_schema()).unwrap();
        let event = sample(created());
        let value = written_by_future(&event, Some(true));
        let ReadError::Newer(newer) = read_envelope(&value, &writer, Some(7)).unwrap_err() else {
            panic!("a field with a value is not ignored")
        };
        assert_eq!(newer.product_id, "p-9");
        assert_eq!(newer.version, 4);
        assert_eq!(newer.event_id, event.event_id);
        assert_eq!(newer.unknown, "field `gift_wrap` of `ProductCreated`");
        assert_eq!(newer.json["payload"]["gift_wrap"], true, "shown as written");
        assert!(newer
            .to_string()
            .starts_with("written by a newer schema (id 7)"));
    }

    #[test]
    fn given_an_event_type_this_build_does_not_know_then_newer_with_its_name() {
        let schema = future_schema();
        let writer = WriterSchema::of(&schema).unwrap();
        let mut value = envelope_to_value(&sample(created()));
        if let Value::Record(fields) = &mut value {
            let future = Value::Record(vec![("x".into(), Value::Long(42))]);
            fields[7].1 = Value::Union(writer.branches.len() as u32 - 1, Box::new(future));
        }
        let bytes = to_avro_datum(&schema, value).unwrap();
        let value = from_avro_datum(&schema, &mut bytes.as_slice(), None).unwrap();
        let ReadError::Newer(newer) = read_envelope(&value, &writer, None).unwrap_err() else {
            panic!("an unknown type is not a bad record")
        };
        assert_eq!(newer.event_type, "FutureEvent");
        assert_eq!(newer.unknown, "event type `FutureEvent`");
        assert_eq!(newer.json["event_type"], "FutureEvent");
        assert_eq!(newer.json["payload"]["x"], 42);
        assert_eq!(newer.json["product_id"], "p-9");
    }
}
