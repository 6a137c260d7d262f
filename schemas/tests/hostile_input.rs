//! Property tests on the event decoding: arbitrary bytes never crash it, and every envelope
//! survives an Avro round trip unchanged.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use foldline_schemas::avro::envelope_to_value;
use foldline_schemas::read::{read_envelope, WriterSchema};
use foldline_schemas::{
    Envelope, LowStockWarning, Payload, ProductCreated, ProductDeleted, ProductUpdated,
    StockAdjusted, PRODUCTS_VALUE_SCHEMA,
};
use proptest::prelude::*;

fn schema() -> Schema {
    // A bogus length in hostile bytes must not make the decoder allocate gigabytes.
    apache_avro::util::max_allocation_bytes(1 << 20);
    Schema::parse_str(PRODUCTS_VALUE_SCHEMA).unwrap()
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        (".{0,40}", any::<i64>(), any::<i64>(), ".{0,20}").prop_map(
            |(name, price_cents, stock, seller_id)| {
                Payload::ProductCreated(ProductCreated {
                    name,
                    price_cents,
                    stock,
                    seller_id,
                    low_stock_threshold: None,
                })
            }
        ),
        (
            proptest::option::of(".{0,40}"),
            proptest::option::of(any::<i64>())
        )
            .prop_map(
                |(name, price_cents)| Payload::ProductUpdated(ProductUpdated { name, price_cents })
            ),
        (
            any::<i64>(),
            any::<i64>(),
            proptest::option::of(".{0,30}"),
            any::<i64>()
        )
            .prop_map(
                |(delta, new_stock, reason, previous_stock)| Payload::StockAdjusted(
                    StockAdjusted {
                        delta,
                        new_stock,
                        reason,
                        previous_stock,
                    }
                )
            ),
        (any::<i64>(), any::<i64>()).prop_map(|(stock, threshold)| Payload::LowStockWarning(
            LowStockWarning { stock, threshold }
        )),
        Just(Payload::ProductDeleted(ProductDeleted {})),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<u128>(),
        ".{1,40}",
        1..i64::MAX,
        -8_000_000_000_000i64..8_000_000_000_000,
        ".{0,40}",
        proptest::option::of(".{1,60}"),
        proptest::option::of(0..1000i64),
        payload(),
        proptest::option::of(".{1,40}"),
    )
        .prop_map(
            |(
                id,
                product_id,
                version,
                millis,
                correlation_id,
                idempotency_key,
                command_index,
                payload,
                actor,
            )| Envelope {
                actor,
                event_id: uuid::Uuid::from_u128(id),
                product_id,
                version,
                occurred_at: chrono::DateTime::from_timestamp_millis(millis).unwrap(),
                correlation_id,
                idempotency_key,
                command_index,
                payload,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_are_refused_or_decoded_never_a_crash(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let schema = schema();
        let writer = WriterSchema::of(&schema).unwrap();
        let reader = GenericDatumReader::builder(&schema).build().unwrap();
        if let Ok(value) = reader.read_value(&mut bytes.as_slice()) {
            let _ = read_envelope(&value, &writer, None);
        }
    }

    #[test]
    fn every_envelope_survives_an_avro_round_trip(event in envelope()) {
        let schema = schema();
        let writer = WriterSchema::of(&schema).unwrap();
        let bytes = GenericDatumWriter::builder(&schema).build().unwrap()
            .write_value_to_vec(envelope_to_value(&event)).unwrap();
        let value = GenericDatumReader::builder(&schema).build().unwrap()
            .read_value(&mut bytes.as_slice()).unwrap();
        prop_assert_eq!(read_envelope(&value, &writer, None).unwrap(), event);
    }
}
