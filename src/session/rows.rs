//! Row descriptions and data rows of ML statements: which client column comes from which base
//! column or ML result, and ML values in PostgreSQL's text and binary formats.

use crate::backends::Sentiment;
use crate::sql::plan::{Field, StreamingPlan};

/// PostgreSQL type OIDs of ML result columns.
const RECORD_OID: u32 = 2249;
const VARCHAR_OID: u32 = 1043;
const FLOAT4_OID: u32 = 700;
const TEXT_OID: u32 = 25;
const FLOAT8_OID: u32 = 701;
const FLOAT8_ARRAY_OID: u32 = 1022;

pub use crate::protocol::message;

/// Where a client column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// The base row's column at this index.
    Base(usize),
    /// The ML result of this placeholder.
    Ml(usize),
}

/// The client's columns of an ML statement, from the base statement's RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub columns: Vec<Column>,
    /// Each client column's RowDescription entry; the last two bytes (format) are set per use.
    fields: Vec<Vec<u8>>,
    /// Columns of the base statement.
    pub base_columns: usize,
}

impl Layout {
    pub fn new(plan: &StreamingPlan, base: &[u8]) -> Layout {
        let base_fields = split_fields(base);
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        for (index, field) in base_fields.iter().enumerate().skip(plan.arg_columns) {
            let name_end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
            match plan.placeholder(&field[..name_end]) {
                Some(placeholder) => {
                    let position = plan
                        .placeholders
                        .iter()
                        .position(|p| p == placeholder)
                        .unwrap_or(0);
                    let (oid, len) = match placeholder.field {
                        Field::Record => (RECORD_OID, -1i16),
                        Field::Sentiment | Field::Text => (VARCHAR_OID, -1),
                        Field::Confidence => (FLOAT4_OID, 4),
                        Field::Body => (TEXT_OID, -1),
                        Field::Embedding => (FLOAT8_ARRAY_OID, -1),
                    };
                    let mut entry = placeholder.name.as_bytes().to_vec();
                    entry.push(0);
                    entry.extend_from_slice(&0u32.to_be_bytes());
                    entry.extend_from_slice(&0i16.to_be_bytes());
                    entry.extend_from_slice(&oid.to_be_bytes());
                    entry.extend_from_slice(&len.to_be_bytes());
                    entry.extend_from_slice(&(-1i32).to_be_bytes());
                    entry.extend_from_slice(&0i16.to_be_bytes());
                    fields.push(entry);
                    columns.push(Column::Ml(position));
                }
                None => {
                    fields.push(field.to_vec());
                    columns.push(Column::Base(index));
                }
            }
        }
        Layout {
            columns,
            fields,
            base_columns: base_fields.len(),
        }
    }

    /// The client's RowDescription body with these result formats (one per column).
    pub fn row_description(&self, formats: &[i16]) -> Vec<u8> {
        let mut out = (self.fields.len() as u16).to_be_bytes().to_vec();
        for (i, field) in self.fields.iter().enumerate() {
            let keep = field.len().saturating_sub(2);
            out.extend_from_slice(&field[..keep]);
            out.extend_from_slice(&formats.get(i).copied().unwrap_or(0).to_be_bytes());
        }
        out
    }

    /// The format of each base column to request in Bind: arguments and ML placeholders in text,
    /// the client's columns as the client asked.
    pub fn base_formats(&self, client: &[i16]) -> Vec<i16> {
        let mut formats = vec![0i16; self.base_columns];
        for (i, column) in self.columns.iter().enumerate() {
            if let Column::Base(base) = column {
                if let Some(slot) = formats.get_mut(*base) {
                    *slot = client.get(i).copied().unwrap_or(0);
                }
            }
        }
        formats
    }
}

/// Expands Bind-style result format codes (none: all text; one: all the same; else one each).
pub fn expand_formats(codes: &[i16], columns: usize) -> Vec<i16> {
    match codes {
        [] => vec![0; columns],
        [one] => vec![*one; columns],
        many => (0..columns)
            .map(|i| many.get(i).copied().unwrap_or(0))
            .collect(),
    }
}

/// The field entries of a RowDescription body (name, then 18 bytes of attributes each).
pub fn split_fields(body: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let Some((count, mut rest)) = body.split_first_chunk::<2>() else {
        return fields;
    };
    for _ in 0..u16::from_be_bytes(*count) {
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            break;
        };
        let end = (nul + 1 + 18).min(rest.len());
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    fields
}

/// The columns of a DataRow body: `None` for NULL.
pub fn split_row(body: &[u8]) -> Vec<Option<&[u8]>> {
    let mut columns = Vec::new();
    let Some((count, mut rest)) = body.split_first_chunk::<2>() else {
        return columns;
    };
    for _ in 0..u16::from_be_bytes(*count) {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            break;
        };
        let len = i32::from_be_bytes(*len);
        if len < 0 {
            columns.push(None);
            rest = tail;
        } else {
            let len = (len as usize).min(tail.len());
            columns.push(Some(&tail[..len]));
            rest = &tail[len..];
        }
    }
    columns
}

/// A detect_sentiment result as `field` in `format` (0 text, 1 binary).
pub fn sentiment_value(s: Sentiment, field: Field, format: i16) -> Vec<u8> {
    let label = s.label.as_str();
    match (field, format) {
        (Field::Confidence, 1) => s.confidence.to_be_bytes().to_vec(),
        (Field::Confidence, _) => float4_text(s.confidence).into_bytes(),
        // (The other fields are not a sentiment's.)
        (Field::Sentiment | Field::Text | Field::Body | Field::Embedding, _) => {
            label.as_bytes().to_vec()
        }
        (Field::Record, 1) => {
            // record_send: column count, then (type oid, length, value) per column.
            let mut out = Vec::with_capacity(28 + label.len());
            out.extend_from_slice(&2i32.to_be_bytes());
            out.extend_from_slice(&VARCHAR_OID.to_be_bytes());
            out.extend_from_slice(&(label.len() as i32).to_be_bytes());
            out.extend_from_slice(label.as_bytes());
            out.extend_from_slice(&FLOAT4_OID.to_be_bytes());
            out.extend_from_slice(&4i32.to_be_bytes());
            out.extend_from_slice(&s.confidence.to_be_bytes());
            out
        }
        (Field::Record, _) => format!("({label},{})", float4_text(s.confidence)).into_bytes(),
    }
}

/// detect_sentiment's whole record; for a NULL result (NULL or empty text, NULL language) a
/// record of two NULLs, `(,)`, as a native function with OUT parameters returns.
pub fn sentiment_record(s: Option<Sentiment>, format: i16) -> Vec<u8> {
    match (s, format) {
        (Some(s), _) => sentiment_value(s, Field::Record, format),
        (None, 1) => {
            let mut out = Vec::with_capacity(20);
            out.extend_from_slice(&2i32.to_be_bytes());
            out.extend_from_slice(&VARCHAR_OID.to_be_bytes());
            out.extend_from_slice(&(-1i32).to_be_bytes());
            out.extend_from_slice(&FLOAT4_OID.to_be_bytes());
            out.extend_from_slice(&(-1i32).to_be_bytes());
            out
        }
        (None, _) => b"(,)".to_vec(),
    }
}

/// A `float8[]` value (`invoke_model_get_embeddings`) in text (`{0.5,1e-05}`) or binary
/// (array_send: one dimension, lower bound 1, no NULLs) format.
pub fn float8_array(values: &[f64], format: i16) -> Vec<u8> {
    if format != 1 {
        let items: Vec<String> = values.iter().map(|&v| float8_text(v)).collect();
        return format!("{{{}}}", items.join(",")).into_bytes();
    }
    let mut out = Vec::with_capacity(20 + 12 * values.len());
    let dimensions: i32 = if values.is_empty() { 0 } else { 1 };
    out.extend_from_slice(&dimensions.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // no NULLs
    out.extend_from_slice(&FLOAT8_OID.to_be_bytes());
    if !values.is_empty() {
        out.extend_from_slice(&(values.len() as i32).to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
        for value in values {
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
    out
}

/// `double precision` in PostgreSQL's default text form: shortest exact digits, fixed for
/// decimal exponents from -4 to 14, else `d.ddde±XX`.
pub fn float8_text(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let magnitude = value.abs();
    if magnitude == 0.0 || (1e-4..1e15).contains(&magnitude) {
        return format!("{value}");
    }
    postgres_exponent(format!("{value:e}"))
}

/// Rust's `1.5e-5` as PostgreSQL writes it: `1.5e-05`.
fn postgres_exponent(text: String) -> String {
    match text.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => text,
    }
}

/// `real` in PostgreSQL's default text form (shortest exact digits; exponent outside 1e-4..1e15).
pub fn float4_text(value: f32) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let magnitude = value.abs();
    if magnitude == 0.0 || (1e-4..1e15).contains(&magnitude) {
        return format!("{value}");
    }
    postgres_exponent(format!("{value:e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::SentimentLabel;

    #[test]
    fn float8_arrays_print_and_send_like_postgres() {
        assert_eq!(
            float8_array(&[0.5, -1.0, 1e-5, 1.5e20, 0.1], 0),
            b"{0.5,-1,1e-05,1.5e+20,0.1}"
        );
        assert_eq!(float8_array(&[], 0), b"{}");
        assert_eq!(float8_text(123456789012345.0), "123456789012345");
        assert_eq!(float8_text(1e15), "1e+15");
        let binary = float8_array(&[2.0], 1);
        let mut want = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, 189, 0, 0, 0, 1, 0, 0, 0, 1];
        want.extend_from_slice(&8i32.to_be_bytes());
        want.extend_from_slice(&2.0f64.to_be_bytes());
        assert_eq!(binary, want);
        assert_eq!(
            float8_array(&[], 1),
            vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 189]
        );
    }

    #[test]
    fn floats_print_like_postgres() {
        assert_eq!(float4_text(0.75), "0.75");
        assert_eq!(float4_text(2.0 / 3.0), "0.6666667");
        assert_eq!(float4_text(1.0), "1");
        assert_eq!(float4_text(0.9), "0.9");
        assert_eq!(float4_text(1e-5), "1e-05");
        assert_eq!(float4_text(f32::NAN), "NaN");
    }

    #[test]
    fn rows_and_descriptions_split() {
        let row = [0u8, 3, 0, 0, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(split_row(&row), vec![Some(&b"a"[..]), None, Some(&b""[..])]);
        let mut description = vec![0u8, 1];
        description.extend_from_slice(b"id\0");
        description.extend_from_slice(&[0u8; 18]);
        assert_eq!(split_fields(&description).len(), 1);
    }

    #[test]
    fn values_in_both_formats() {
        let s = Sentiment {
            label: SentimentLabel::Positive,
            confidence: 0.75,
        };
        assert_eq!(sentiment_value(s, Field::Record, 0), b"(POSITIVE,0.75)");
        assert_eq!(sentiment_record(Some(s), 0), b"(POSITIVE,0.75)");
        assert_eq!(sentiment_record(None, 0), b"(,)");
        // record_send of two NULL fields: count, then (oid, -1) twice.
        let mut null = 2i32.to_be_bytes().to_vec();
        for oid in [VARCHAR_OID, FLOAT4_OID] {
            null.extend_from_slice(&oid.to_be_bytes());
            null.extend_from_slice(&(-1i32).to_be_bytes());
        }
        assert_eq!(sentiment_record(None, 1), null);
        assert_eq!(
            sentiment_value(s, Field::Confidence, 1),
            0.75f32.to_be_bytes()
        );
        let record = sentiment_value(s, Field::Record, 1);
        assert_eq!(&record[..4], &2i32.to_be_bytes());
        assert_eq!(record.len(), 4 + 8 + 8 + 8 + 4);
        assert_eq!(expand_formats(&[1], 3), vec![1, 1, 1]);
        assert_eq!(expand_formats(&[], 2), vec![0, 0]);
        assert_eq!(expand_formats(&[0, 1], 2), vec![0, 1]);
    }
}
