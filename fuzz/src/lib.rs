//! Shared parts of pgenrich's fuzz targets (`fuzz_targets/*.rs`, one binary each):
//!
//! - [`sql`]: the checks every ML statement text goes through — the hook, the statement
//!   splitter, the rewrite of unparsable forms, EXPLAIN recognition and the three planners —
//!   with the invariants their results must hold.
//! - [`mutate`]: sqlparser-level mutations of seed statements for the `sql_ast` target.

pub mod mutate;
pub mod sql;
