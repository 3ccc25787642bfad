//! ML statement planning on statements sqlparser wrote: the fuzzer's bytes pick a seed
//! statement (`seeds/sql`) and mutate its syntax tree (`pgenrich_fuzz::mutate`); the printed
//! result goes through the same checks as the `sql` target.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(sql) = pgenrich_fuzz::mutate::mutated_sql(&mut u) {
        pgenrich_fuzz::sql::check(&sql);
    }
});
