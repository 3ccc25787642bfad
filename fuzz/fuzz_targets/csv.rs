//! The `text/csv` records of SageMaker endpoints: `split_records` and `split_fields` on
//! arbitrary text, checked against the quoting rules, and `write_record` round trips — fields
//! written then split come back, and a split record written again splits the same.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use pgenrich::enrich::csv::{split_fields, split_records, write_record};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        response(text);
    }
    let mut u = Unstructured::new(data);
    if let Ok(rows) = Vec::<Vec<Option<String>>>::arbitrary(&mut u) {
        round_trip(&rows);
    }
});

/// A response body as an endpoint might send it.
fn response(body: &str) {
    let quotes = body.bytes().filter(|&b| b == b'"').count();
    let records = match split_records(body) {
        Ok(records) => records,
        Err(_) => {
            assert!(quotes % 2 == 1, "an error on balanced quotes");
            return;
        }
    };
    assert!(quotes % 2 == 0, "unbalanced quotes accepted");
    let base = body.as_ptr() as usize;
    let mut at = 0;
    for record in &records {
        let start = record.as_ptr() as usize - base;
        assert!(start >= at && start + record.len() <= body.len());
        // A record ends at a line end outside quotes, which is not part of it.
        let end = start + record.len();
        assert!(
            end == body.len() || body[end..].starts_with('\n') || body[end..].starts_with("\r\n")
        );
        at = end;
        // Each record is one record: its quotes balance and its line ends are quoted.
        if !record.is_empty() {
            assert_eq!(split_records(record), Ok(vec![*record]));
        }
        let Ok(fields) = split_fields(record) else {
            continue;
        };
        assert!(!fields.is_empty());
        // Written back, the fields read the same.
        let mut out = String::new();
        write_record(&mut out, fields.iter().map(|f| Some(f.as_str())));
        let again = split_records(&out).expect("written records split");
        assert_eq!(again.len(), 1, "{out:?}");
        assert_eq!(
            split_fields(again[0]).expect("written fields split"),
            fields
        );
    }
    let consumed = body.len() - at;
    assert!(consumed <= 2, "text after the last record is lost");
}

/// Records written from fields split back into exactly those fields (NULL as empty).
fn round_trip(rows: &[Vec<Option<String>>]) {
    let mut body = String::new();
    let mut expected = Vec::new();
    for row in rows.iter().filter(|r| !r.is_empty()) {
        write_record(&mut body, row.iter().map(|f| f.as_deref()));
        expected.push(
            row.iter()
                .map(|f| f.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
        );
    }
    let records = split_records(&body).expect("written records split");
    assert_eq!(records.len(), expected.len(), "{body:?}");
    for (record, fields) in records.iter().zip(&expected) {
        assert_eq!(
            &split_fields(record).expect("written fields split"),
            fields,
            "{body:?}"
        );
    }
}
