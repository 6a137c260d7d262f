//! Records written by a later version of Foldline than the one under test: the committed
//! envelope schema extended as a next version might extend it (a new event type `FutureEvent`
//! appended to the payload union, and a new optional field `gift_wrap` on `ProductCreated`),
//! registered under the topic's subject like any new version, and events written with it.

use apache_avro::types::Value;
use apache_avro::Schema;
use foldline_schemas::avro::envelope_to_value;
use foldline_schemas::wire::registry_token;
use foldline_schemas::{Envelope, PRODUCTS_VALUE_SCHEMA};

/// The future version of the envelope schema.
pub fn schema_json() -> String {
    let mut json: serde_json::Value =
        serde_json::from_str(PRODUCTS_VALUE_SCHEMA).expect("the committed schema is JSON");
    let fields = json["fields"].as_array_mut().expect("a record");
    let payload = fields
        .iter_mut()
        .find(|f| f["name"] == "payload")
        .expect("a payload field");
    let union = payload["type"].as_array_mut().expect("a union");
    union[0]["fields"]
        .as_array_mut()
        .expect("ProductCreated has fields")
        .push(
            serde_json::json!({"name": "gift_wrap", "type": ["null", "boolean"], "default": null}),
        );
    union.push(serde_json::json!({"type": "record", "name": "FutureEvent",
        "doc": "An event type the build under test does not know.",
        "fields": [{"name": "note", "type": "string"}]}));
    json.to_string()
}

/// Registers the future schema under `topic`'s value subject (as an upgraded producer would);
/// returns its id.
pub async fn register(topic: &str) -> u32 {
    let token = registry_token("tests", Some(&crate::auth::secret())).expect("a token");
    let url = format!(
        "{}/subjects/{topic}-value/versions",
        crate::registry_url().trim_end_matches('/')
    );
    let answer = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&serde_json::json!({"schema": schema_json()}))
        .send()
        .await
        .expect("the registry answers");
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.expect("JSON");
    assert!(
        status.is_success(),
        "registering the future schema: {status} {body}"
    );
    body["id"].as_u64().expect("an id") as u32
}

/// What the future writer appends.
pub enum Future {
    /// A `FutureEvent` with this note.
    NewType(String),
    /// `event` (a `ProductCreated`) with `gift_wrap` set: a field the build does not know.
    NewField(bool),
}

/// `event`'s bytes in the Confluent wire format under the future schema `schema_id`, its
/// payload replaced as `future` says.
pub fn encode(schema_id: u32, event: &Envelope, future: &Future) -> Vec<u8> {
    let schema = Schema::parse_str(&schema_json()).expect("the future schema parses");
    let mut value = envelope_to_value(event);
    let Value::Record(fields) = &mut value else {
        unreachable!("an envelope is a record")
    };
    let payload = fields
        .iter_mut()
        .find(|(name, _)| name == "payload")
        .expect("a payload");
    match future {
        Future::NewType(note) => {
            let branches = foldline_schemas::EventType::ALL.len() as u32;
            let record = Value::Record(vec![("note".into(), Value::String(note.clone()))]);
            payload.1 = Value::Union(branches, Box::new(record));
        }
        Future::NewField(wrap) => {
            let Value::Union(0, created) = &mut payload.1 else {
                panic!("NewField needs a ProductCreated event")
            };
            let Value::Record(created) = created.as_mut() else {
                unreachable!()
            };
            created.push((
                "gift_wrap".into(),
                Value::Union(1, Box::new(Value::Boolean(*wrap))),
            ));
        }
    }
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .expect("a writer")
        .write_value_to_vec(value)
        .expect("the value fits the future schema");
    let mut bytes = vec![0];
    bytes.extend_from_slice(&schema_id.to_be_bytes());
    bytes.extend_from_slice(&body);
    bytes
}
