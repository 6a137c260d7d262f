//! Records written by other versions of Foldline than the one under test, registered under
//! the topic's subject like any version: a *future* one (the committed envelope schema
//! extended as a next version might extend it: a new event type `FutureEvent` appended to the
//! payload union, a new optional field `gift_wrap` on `ProductCreated`) and the *previous*
//! one (the schema as committed before the current version, from git).

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
    register_json(topic, &schema_json()).await
}

/// The envelope schema as committed before the current version of the file: the newest
/// committed version that differs from the working copy.
pub fn previous_schema_json() -> String {
    let path = "schemas/avro/products-value.avsc";
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .expect("git is installed");
        assert!(output.status.success(), "git {args:?}");
        String::from_utf8(output.stdout).expect("UTF-8")
    };
    let top = git(&["rev-parse", "--show-toplevel"]);
    let current: serde_json::Value =
        serde_json::from_str(PRODUCTS_VALUE_SCHEMA).expect("the schema is JSON");
    for commit in git(&["-C", top.trim(), "log", "--format=%H", "--", path]).lines() {
        let text = git(&["-C", top.trim(), "show", &format!("{commit}:{path}")]);
        let then: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        if then != current {
            return text;
        }
    }
    panic!("no earlier version of {path} in git (a shallow clone?)")
}

/// `event` as a writer of the previous schema wrote it: the fields and types that schema
/// does not have left out (a `StockAdjusted` without `previous_stock`, a `ProductCreated`
/// without `low_stock_threshold`), in the wire format under `schema_id`.
pub fn encode_previous(schema_id: u32, event: &Envelope) -> Vec<u8> {
    let json = previous_schema_json();
    let schema = Schema::parse_str(&json).expect("the previous schema parses");
    let keep: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let mut value = envelope_to_value(event);
    let Value::Record(fields) = &mut value else {
        unreachable!("an envelope is a record")
    };
    let names = |record: &serde_json::Value| -> Vec<String> {
        record["fields"]
            .as_array()
            .map(|f| {
                f.iter()
                    .map(|f| f["name"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let envelope_fields = names(&keep);
    fields.retain(|(name, _)| envelope_fields.contains(name));
    let union = keep["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "payload"))
        .and_then(|f| f["type"].as_array())
        .expect("a payload union")
        .clone();
    if let Some((_, Value::Union(index, payload))) = fields.iter_mut().find(|(n, _)| n == "payload")
    {
        let branch = union
            .get(*index as usize)
            .unwrap_or_else(|| panic!("the previous schema has no branch {index}"));
        let branch_fields = names(branch);
        if let Value::Record(payload_fields) = payload.as_mut() {
            payload_fields.retain(|(name, _)| branch_fields.contains(name));
        }
    }
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .expect("a writer")
        .write_value_to_vec(value)
        .expect("the value fits the previous schema");
    let mut bytes = vec![0];
    bytes.extend_from_slice(&schema_id.to_be_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// Registers `schema` under `topic`'s value subject; returns its id.
pub async fn register_json(topic: &str, schema: &str) -> u32 {
    let token = registry_token("tests", Some(&crate::auth::secret())).expect("a token");
    let url = format!(
        "{}/subjects/{topic}-value/versions",
        crate::registry_url().trim_end_matches('/')
    );
    let answer = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&serde_json::json!({"schema": schema}))
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
