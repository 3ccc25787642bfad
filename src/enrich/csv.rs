//! `text/csv` for SageMaker endpoints: one RFC 4180 record per row going out, one record per row
//! coming back.

/// Appends one record: fields separated by commas, a field containing a comma, double quote, CR or
/// LF double-quoted with inner quotes doubled, NULL as an empty unquoted field, ending in `\n`.
pub fn write_record<'a>(out: &mut String, fields: impl IntoIterator<Item = Option<&'a str>>) {
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let Some(value) = field else { continue };
        if value.contains([',', '"', '\r', '\n']) {
            out.push('"');
            for c in value.chars() {
                if c == '"' {
                    out.push('"');
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(value);
        }
    }
    out.push('\n');
}

/// Splits a response body into records at line ends outside quotes (`\n` or `\r\n`), returning
/// each record's text as sent. A final line end does not start another record. Errors on an
/// unterminated quote.
pub fn split_records(body: &str) -> Result<Vec<&str>, &'static str> {
    let mut records = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let bytes = body.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => {
                let end = if i > start && bytes[i - 1] == b'\r' {
                    i - 1
                } else {
                    i
                };
                records.push(&body[start..end]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("unterminated quoted field");
    }
    if start < body.len() {
        records.push(&body[start..]);
    }
    Ok(records)
}

/// Splits one record (as [`split_records`] returns it) into its fields, unquoting quoted ones.
pub fn split_fields(record: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = record.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (_, c) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field");
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_through_write_record() {
        let values = ["1", "", "a,b", "say \"hi\"", "x\ny", "-2.5"];
        let mut out = String::new();
        write_record(&mut out, values.iter().map(|v| Some(*v)));
        let records = split_records(&out).expect("valid in this test");
        assert_eq!(records.len(), 1);
        assert_eq!(
            split_fields(records[0]).expect("valid in this test"),
            values
        );
        assert_eq!(split_fields("").expect("valid in this test"), [""]);
        assert!(split_fields("\"open").is_err());
    }

    #[test]
    fn records_are_quoted_only_when_needed() {
        let mut out = String::new();
        write_record(
            &mut out,
            [
                Some("1"),
                None,
                Some("a,b"),
                Some("say \"hi\""),
                Some("x\ny"),
                Some(""),
            ],
        );
        assert_eq!(out, "1,,\"a,b\",\"say \"\"hi\"\"\",\"x\ny\",\n");
    }

    #[test]
    fn responses_split_outside_quotes() {
        assert_eq!(split_records("0.5\n0.7\n"), Ok(vec!["0.5", "0.7"]));
        assert_eq!(split_records("0.5\r\n0.7"), Ok(vec!["0.5", "0.7"]));
        assert_eq!(
            split_records("\"a\nb\",1\nc\n"),
            Ok(vec!["\"a\nb\",1", "c"])
        );
        assert_eq!(split_records("\n\n"), Ok(vec!["", ""]));
        assert_eq!(split_records(""), Ok(vec![]));
        assert!(split_records("\"open\n").is_err());
    }
}
