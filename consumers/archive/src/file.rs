//! The archive's Avro object container files: one record per event, the envelope schema
//! embedded (as the `event` field of an `ArchivedEvent` record that also keeps where the event
//! was in the log), blocks compressed with deflate or zstd.

use std::sync::LazyLock;

use apache_avro::schema::Schema;
use apache_avro::types::Value;
use apache_avro::{Codec, Reader, Writer};
use foldline_consumer_runtime::Record;
use foldline_schemas::avro::envelope_to_value;
use foldline_schemas::read::{read_envelope, WriterSchema};
use foldline_schemas::PRODUCTS_VALUE_SCHEMA;

/// The schema written into every file: the envelope plus its place in the log.
pub static ARCHIVE_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let json = format!(
        r#"{{"type": "record", "name": "ArchivedEvent", "namespace": "io.foldline.archive",
            "doc": "One event of the products topic and where it was in the log.",
            "fields": [
              {{"name": "partition", "type": "int"}},
              {{"name": "offset", "type": "long"}},
              {{"name": "timestamp", "type": ["null", {{"type": "long", "logicalType": "timestamp-millis"}}], "default": null,
                "doc": "The broker's record timestamp."}},
              {{"name": "key", "type": ["null", "string"], "default": null}},
              {{"name": "event", "type": {PRODUCTS_VALUE_SCHEMA}}}
            ]}}"#
    );
    Schema::parse_str(&json).expect("the archive schema embeds the committed envelope schema")
});

/// Block compression of archive files.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Deflate,
    Zstd,
    None,
}

impl Compression {
    fn codec(self) -> Codec {
        match self {
            Compression::Deflate => Codec::Deflate(Default::default()),
            Compression::Zstd => Codec::Zstandard(Default::default()),
            Compression::None => Codec::Null,
        }
    }
}

/// A file being filled. Records are encoded and compressed block by block as they come, so
/// memory holds the compressed file, not the records.
pub struct FileWriter {
    writer: Writer<'static, Vec<u8>>,
    pub records: usize,
}

impl FileWriter {
    pub fn new(compression: Compression) -> FileWriter {
        FileWriter {
            // Fails only for a schema the writer cannot use; ours is fixed and tested.
            writer: Writer::with_codec(&ARCHIVE_SCHEMA, Vec::new(), compression.codec())
                .expect("the archive schema is writable"),
            records: 0,
        }
    }

    pub fn append(&mut self, record: &Record) -> Result<(), apache_avro::Error> {
        let optional = |v: Option<Value>| match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(v) => Value::Union(1, Box::new(v)),
        };
        let value = Value::Record(vec![
            ("partition".into(), Value::Int(record.partition)),
            ("offset".into(), Value::Long(record.offset)),
            (
                "timestamp".into(),
                optional(record.timestamp_ms.map(Value::TimestampMillis)),
            ),
            (
                "key".into(),
                optional(record.key.clone().map(Value::String)),
            ),
            ("event".into(), envelope_to_value(&record.event)),
        ]);
        self.writer.append_value(value)?;
        self.records += 1;
        Ok(())
    }

    /// Bytes written so far (compressed blocks; the block being filled is not counted).
    pub fn bytes(&self) -> usize {
        self.writer.get_ref().len()
    }

    /// The complete file.
    pub fn finish(self) -> Result<Vec<u8>, apache_avro::Error> {
        self.writer.into_inner()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not an Avro container file: {0}")]
    Avro(#[from] apache_avro::Error),
    #[error("the file's schema is not an archive schema (no `event` record field)")]
    NotAnArchive,
    #[error("record {index} of the file: {detail}")]
    Record { index: usize, detail: String },
}

/// Reads every record of an archive file, with the schema embedded in it, through the one
/// reader of every version ([`read_envelope`]): files written under older schemas read as
/// the current shape.
pub fn read_file(bytes: &[u8]) -> Result<Vec<Record>, ReadError> {
    let reader = Reader::new(bytes)?;
    let Schema::Record(archived) = reader.writer_schema() else {
        return Err(ReadError::NotAnArchive);
    };
    let event_schema = archived
        .fields
        .iter()
        .find(|f| f.name == "event")
        .ok_or(ReadError::NotAnArchive)?;
    let writer = WriterSchema::of(&event_schema.schema).map_err(|_| ReadError::NotAnArchive)?;
    let mut records = Vec::new();
    for (index, value) in reader.enumerate() {
        let bad = |detail: String| ReadError::Record { index, detail };
        let Value::Record(fields) = value? else {
            return Err(bad("not a record".into()));
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| unwrap_union(v))
                .ok_or_else(|| bad(format!("field `{name}` is missing")))
        };
        let partition = match field("partition")? {
            Value::Int(p) => *p,
            other => return Err(bad(format!("partition: {other:?}"))),
        };
        let offset = match field("offset")? {
            Value::Long(o) => *o,
            other => return Err(bad(format!("offset: {other:?}"))),
        };
        let timestamp_ms = match field("timestamp")? {
            Value::TimestampMillis(t) | Value::Long(t) => Some(*t),
            _ => None,
        };
        let key = match field("key")? {
            Value::String(k) => Some(k.clone()),
            _ => None,
        };
        let event =
            read_envelope(field("event")?, &writer, None).map_err(|e| bad(e.to_string()))?;
        records.push(Record {
            partition,
            offset,
            key,
            timestamp_ms,
            event,
        });
    }
    Ok(records)
}

fn unwrap_union(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => inner,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use foldline_schemas::{Envelope, Payload, ProductCreated, StockAdjusted};

    use super::*;

    fn record(offset: i64, payload: Payload) -> Record {
        Record {
            partition: 1,
            offset,
            key: Some("p-1".into()),
            timestamp_ms: Some(1_763_769_600_000 + offset),
            event: Envelope {
                actor: None,
                event_id: uuid::Uuid::new_v4(),
                product_id: "p-1".into(),
                version: offset + 1,
                occurred_at: Utc.timestamp_millis_opt(1_763_769_600_000).unwrap(),
                correlation_id: "c".into(),
                idempotency_key: None,
                command_index: Some(0),
                payload,
            },
        }
    }

    #[test]
    fn every_compression_round_trips_records_with_their_place_in_the_log() {
        let written = vec![
            record(
                7,
                Payload::ProductCreated(ProductCreated {
                    name: "Lamp".into(),
                    price_cents: 2599,
                    stock: 3,
                    seller_id: "s-1".into(),
                    low_stock_threshold: None,
                }),
            ),
            record(
                9,
                Payload::StockAdjusted(StockAdjusted {
                    delta: -1,
                    new_stock: 2,
                    reason: Some("sold".into()),
                    previous_stock: 3,
                }),
            ),
        ];
        for compression in [Compression::Deflate, Compression::Zstd, Compression::None] {
            let mut file = FileWriter::new(compression);
            for r in &written {
                file.append(r).unwrap();
            }
            assert_eq!(file.records, 2);
            let read = read_file(&file.finish().unwrap()).unwrap();
            assert_eq!(read.len(), 2);
            for (a, b) in read.iter().zip(&written) {
                assert_eq!(
                    (a.partition, a.offset, &a.key),
                    (b.partition, b.offset, &b.key)
                );
                assert_eq!(a.timestamp_ms, b.timestamp_ms);
                assert_eq!(a.event, b.event);
            }
        }
    }

    /// A file the archiver wrote before the schema of 2026-12-07: its embedded envelope has
    /// no `previous_stock` and no `LowStockThresholdSet`; restore and rebuild read it through
    /// the one reader of every version, as the current shape.
    #[test]
    fn a_file_written_under_the_previous_schema_reads_upcast() {
        let mut envelope: serde_json::Value = serde_json::from_str(PRODUCTS_VALUE_SCHEMA).unwrap();
        let fields = envelope["fields"].as_array_mut().unwrap();
        let payload = fields.iter_mut().find(|f| f["name"] == "payload").unwrap();
        let union = payload["type"].as_array_mut().unwrap();
        union.retain(|b| b["name"] != "LowStockThresholdSet");
        for branch in union.iter_mut() {
            let new = ["previous_stock", "low_stock_threshold"];
            branch["fields"]
                .as_array_mut()
                .unwrap()
                .retain(|f| !new.contains(&f["name"].as_str().unwrap()));
        }
        let archived = format!(
            r#"{{"type": "record", "name": "ArchivedEvent", "namespace": "io.foldline.archive",
                "fields": [{{"name": "partition", "type": "int"}}, {{"name": "offset", "type": "long"}},
                  {{"name": "timestamp", "type": ["null", "long"], "default": null}},
                  {{"name": "key", "type": ["null", "string"], "default": null}},
                  {{"name": "event", "type": {envelope}}}]}}"#
        );
        let old = Schema::parse_str(&archived).unwrap();
        let mut event = envelope_to_value(
            &record(
                4,
                Payload::StockAdjusted(StockAdjusted {
                    delta: 5,
                    new_stock: 12,
                    reason: None,
                    previous_stock: 7,
                }),
            )
            .event,
        );
        if let Value::Record(fields) = &mut event {
            if let Some((_, Value::Union(_, adjusted))) =
                fields.iter_mut().find(|(n, _)| n == "payload")
            {
                if let Value::Record(adjusted) = adjusted.as_mut() {
                    adjusted.retain(|(name, _)| name != "previous_stock");
                }
            }
        }
        let mut writer = Writer::new(&old, Vec::new()).unwrap();
        writer
            .append_value(Value::Record(vec![
                ("partition".into(), Value::Int(1)),
                ("offset".into(), Value::Long(4)),
                ("timestamp".into(), Value::Union(0, Box::new(Value::Null))),
                ("key".into(), Value::Union(0, Box::new(Value::Null))),
                ("event".into(), event),
            ]))
            .unwrap();
        let read = read_file(&writer.into_inner().unwrap()).unwrap();
        let Payload::StockAdjusted(adjusted) = &read[0].event.payload else {
            panic!("{read:?}")
        };
        assert_eq!(adjusted.previous_stock, 7, "new_stock - delta");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read_file(b"not avro at all").is_err());
        assert!(read_file(&[]).is_err());
    }
}
