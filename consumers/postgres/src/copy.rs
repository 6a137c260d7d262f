//! Rows in PostgreSQL's binary `COPY` format, for bulk loads through sqlx's `copy_in_raw`.
//!
//! The values are encoded by `postgres-types` (the encoders `tokio-postgres` uses); this
//! file only frames them: a header, per row the field count and each value's length (-1 for
//! NULL), a trailer (PostgreSQL docs, "COPY — Binary Format"). Binary spares PostgreSQL
//! the text parsing of every number and timestamp, and the escaping of text on our side.

use bytes::{BufMut, BytesMut};
use postgres_types::{IsNull, ToSql, Type};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

type EncodeError = Box<dyn std::error::Error + Sync + Send>;

/// A buffer of rows; [`CopyRows::take`] hands over what is written so far, to send.
pub struct CopyRows {
    buf: BytesMut,
    columns: &'static [Type],
}

impl CopyRows {
    /// Rows of `columns` (the table's column types, in the COPY statement's order).
    pub fn new(columns: &'static [Type]) -> CopyRows {
        let mut buf = BytesMut::with_capacity(1 << 20);
        buf.put_slice(SIGNATURE);
        buf.put_i32(0); // flags: no OIDs
        buf.put_i32(0); // header extension length
        CopyRows { buf, columns }
    }

    /// Appends one row: `values` in the order of the columns.
    pub fn row(&mut self, values: &[&(dyn ToSql + Sync)]) -> Result<(), EncodeError> {
        assert_eq!(values.len(), self.columns.len(), "one value per column");
        self.buf.put_i16(values.len() as i16);
        for (value, ty) in values.iter().zip(self.columns) {
            let at = self.buf.len();
            self.buf.put_i32(0);
            match value.to_sql_checked(ty, &mut self.buf)? {
                IsNull::Yes => {
                    self.buf.truncate(at);
                    self.buf.put_i32(-1);
                }
                IsNull::No => {
                    let len = i32::try_from(self.buf.len() - at - 4)?;
                    self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What is written so far (the buffer starts empty again).
    pub fn take(&mut self) -> BytesMut {
        self.buf.split()
    }

    /// The rest, with the trailer.
    pub fn finish(mut self) -> BytesMut {
        self.buf.put_i16(-1);
        self.buf
    }
}

/// A JSON text sent as `jsonb`: the version byte, then the text (what PostgreSQL's
/// `jsonb_recv` reads), without parsing it into a tree on this side first.
#[derive(Debug)]
pub struct JsonbText<'a>(pub &'a str);

impl ToSql for JsonbText<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, EncodeError> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    postgres_types::accepts!(JSONB);
    postgres_types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_framed_with_its_field_count_and_each_lengths_and_null_as_minus_one() {
        static COLUMNS: &[Type] = &[Type::INT8, Type::TEXT, Type::JSONB];
        let mut rows = CopyRows::new(COLUMNS);
        let none: Option<&str> = None;
        rows.row(&[&7i64, &none, &JsonbText("{}")]).unwrap();
        let bytes = rows.finish();
        let mut expected = SIGNATURE.to_vec();
        expected.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend(3i16.to_be_bytes());
        expected.extend(8i32.to_be_bytes());
        expected.extend(7i64.to_be_bytes());
        expected.extend((-1i32).to_be_bytes());
        expected.extend(3i32.to_be_bytes());
        expected.extend([1, b'{', b'}']);
        expected.extend((-1i16).to_be_bytes());
        assert_eq!(&bytes[..], &expected[..]);
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_not_sent() {
        static COLUMNS: &[Type] = &[Type::INT4];
        let mut rows = CopyRows::new(COLUMNS);
        assert!(rows.row(&[&7i64]).is_err());
    }
}
