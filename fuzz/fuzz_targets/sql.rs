//! ML statement inspection and planning on arbitrary text: the hook, the statement splitter,
//! the rewrite of forms sqlparser cannot parse, EXPLAIN recognition and the streaming and base +
//! residual planners (see `pgenrich_fuzz::sql` for the invariants). Inputs are capped at 4 KiB:
//! the parser's behaviour on extremely long operator chains is known and guarded separately.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Longest statement text explored.
const MAX_LEN: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_LEN {
        return;
    }
    if let Ok(sql) = std::str::from_utf8(data) {
        pgenrich_fuzz::sql::check(sql);
    }
});
