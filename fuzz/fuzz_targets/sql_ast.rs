//! ML statement planning on statements sqlparser wrote: the fuzzer's bytes pick a seed
//! statement (`seeds/sql`) and mutate its syntax tree (`pgenrich_fuzz::mutate`); the printed
//! result goes through the same checks as the `sql` target, with the same 4 KiB cap (edits that
//! nest the statement's own expressions can multiply its length).
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

/// Longest statement text checked, as in the `sql` target.
const MAX_LEN: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(sql) = pgenrich_fuzz::mutate::mutated_sql(&mut u) {
        if sql.len() <= MAX_LEN {
            pgenrich_fuzz::sql::check(&sql);
        }
    }
});
