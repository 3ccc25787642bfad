//! Whether a text too long to tokenize may call an ML function, in one pass over its bytes
//! and without allocating. sqlparser's tokenizer builds a vector of every token (about a
//! hundred bytes each) and its parser a tree of a few hundred bytes per token, so a statement
//! text of a few megabytes costs a planner thread hundreds of megabytes: texts over
//! `max_ml_statement_bytes` are not tokenized. This check decides instead whether such a text
//! is relayed (it certainly calls none) or refused.
//!
//! It must never miss a call PostgreSQL would run, so it errs on the side of "may call": it
//! skips only what it is sure is not code — string constants (`'…'` with `''`, `E'…'` with
//! backslash escapes too), quoted identifiers (`"…"`, compared as names), dollar quotes
//! (`$tag$…$tag$`, not after a name character, where `$` belongs to the name, but after a
//! number or another dollar quote; `$1$` both as a tag and as a parameter) and comments
//! (`--` to a `\n` or `\r`, and `/* … */` ended at the first `*/`, which ends nested comments
//! early and so only ever scans more; neither right after an operator character, where
//! sqlparser may read them as part of an operator) — and reports any ML schema name followed by
//! a `.` in what is left.

use super::ML_SCHEMAS;

/// Whether `sql` may call an ML function: an ML schema's name (bare or quoted) followed, past
/// spaces and comments, by a `.`, outside string constants, dollar quotes and comments.
pub fn may_call_ml(sql: &[u8]) -> bool {
    // `$1$` is a dollar quote for the tokenizer but a parameter and a `$` for PostgreSQL: both
    // readings are scanned.
    scan(sql, false) || scan(sql, true)
}

/// One pass over `sql`; `digit_tags`: whether `$1$` opens a dollar quote (as for sqlparser's
/// tokenizer) or is a parameter followed by a `$` (as for PostgreSQL).
fn scan(sql: &[u8], digit_tags: bool) -> bool {
    let mut at = 0;
    // Where the last dollar quote or number ended: a name character there (a `$`, the `E` of
    // an `E'…'`) starts a token instead of continuing a name (`$$$$$$aws_comprehend.f(` is two
    // empty strings and a call, `1$$…$$` a number and a string; found by the sql fuzz target).
    let mut token_end = 0;
    while at < sql.len() {
        let byte = sql[at];
        let starts_token = at == token_end || !after_name(sql, at);
        match byte {
            b'\'' => at = string_end(sql, at + 1, false),
            b'"' => {
                let end = quoted_end(sql, at + 1);
                let name = &sql[at + 1..end.saturating_sub(1).max(at + 1)];
                if is_ml_schema(name) && dot_follows(sql, end) {
                    return true;
                }
                at = end;
            }
            // After an operator character sqlparser may read `--` or `/*` as part of an
            // operator (`@-@`); PostgreSQL never does. Scanning on only reports more.
            b'-' if sql.get(at + 1) == Some(&b'-') && !after_operator(sql, at) => {
                at = line_end(sql, at)
            }
            b'/' if sql.get(at + 1) == Some(&b'*') && !after_operator(sql, at) => {
                at = comment_end(sql, at + 2)
            }
            b'$' if starts_token => match dollar_tag(sql, at, digit_tags) {
                Some(tag) => {
                    let body = at + tag.len();
                    at = memchr::memmem::find(&sql[body..], tag)
                        .map_or(sql.len(), |n| body + n + tag.len());
                    token_end = at;
                }
                None => at += 1,
            },
            _ if byte.is_ascii_digit() => {
                at = number_end(sql, at);
                token_end = at;
            }
            _ if is_name_byte(byte) => {
                let end = at + sql[at..].iter().take_while(|&&b| is_name_byte(b)).count();
                let word = &sql[at..end];
                if (byte == b'e' || byte == b'E')
                    && word.len() == 1
                    && sql.get(end) == Some(&b'\'')
                    && starts_token
                {
                    // E'…': backslash escapes.
                    at = string_end(sql, end + 1, true);
                    continue;
                }
                if is_ml_schema(word) && dot_follows(sql, end) {
                    return true;
                }
                at = end;
            }
            _ => at += 1,
        }
    }
    false
}

/// The end of the number starting at `at` (a digit), as the tokenizer reads numbers: digits
/// with `_` separators, `0x`/`0o`/`0b` and their digits, or a fraction after one `.` and an
/// exponent, and an `L` suffix. A name starts after it (PostgreSQL 15 reads `1abc` as `1 abc`).
fn number_end(sql: &[u8], at: usize) -> usize {
    let digits = |from: usize, radix: u32| {
        from + sql[from.min(sql.len())..]
            .iter()
            .take_while(|&&b| b == b'_' || char::from(b).is_digit(radix))
            .count()
    };
    let radix = match (sql[at], sql.get(at + 1).map(u8::to_ascii_lowercase)) {
        (b'0', Some(b'x')) => 16,
        (b'0', Some(b'o')) => 8,
        (b'0', Some(b'b')) => 2,
        _ => 10,
    };
    if radix != 10 {
        return digits(at + 2, radix);
    }
    let mut end = digits(at, 10);
    if sql.get(end) == Some(&b'.') {
        end = digits(end + 1, 10);
    }
    if matches!(sql.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(sql.get(end + 1), Some(b'+' | b'-')));
        if sql
            .get(end + 1 + sign)
            .is_some_and(|b| b.is_ascii_digit() || *b == b'_')
        {
            end = digits(end + 1 + sign, 10);
        }
    }
    end + usize::from(sql.get(end) == Some(&b'L'))
}

fn is_ml_schema(word: &[u8]) -> bool {
    ML_SCHEMAS
        .iter()
        .any(|schema| word.eq_ignore_ascii_case(schema.as_bytes()))
}

/// Letters, digits, `_`, `$` and every byte of a multi-byte character, as in PostgreSQL names.
fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

fn after_operator(sql: &[u8], at: usize) -> bool {
    at > 0 && b"+-*/<>=~!@#%^&|`?".contains(&sql[at - 1])
}

fn after_name(sql: &[u8], at: usize) -> bool {
    at > 0 && is_name_byte(sql[at - 1])
}

/// Past spaces and comments from `at`, whether the next byte is a `.`.
fn dot_follows(sql: &[u8], mut at: usize) -> bool {
    loop {
        match sql.get(at) {
            Some(b) if b.is_ascii_whitespace() || *b == 0x0b => at += 1,
            Some(b'-') if sql.get(at + 1) == Some(&b'-') => at = line_end(sql, at),
            Some(b'/') if sql.get(at + 1) == Some(&b'*') => at = comment_end(sql, at + 2),
            Some(b'.') => return true,
            _ => return false,
        }
    }
}

/// The end of a `--` comment starting at `at`: past its line's end, a `\n` or, as for
/// PostgreSQL's lexer, a `\r`.
fn line_end(sql: &[u8], at: usize) -> usize {
    sql[at..]
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map_or(sql.len(), |n| at + n + 1)
}

/// The end (one past the closing quote) of a string constant whose body starts at `at`.
fn string_end(sql: &[u8], mut at: usize, backslash: bool) -> usize {
    while at < sql.len() {
        match sql[at] {
            b'\\' if backslash => at += 2,
            b'\'' if sql.get(at + 1) == Some(&b'\'') => at += 2,
            b'\'' => return at + 1,
            _ => at += 1,
        }
    }
    sql.len()
}

/// The end (one past the closing quote) of a quoted identifier whose body starts at `at`.
fn quoted_end(sql: &[u8], mut at: usize) -> usize {
    while at < sql.len() {
        match sql[at] {
            b'"' if sql.get(at + 1) == Some(&b'"') => at += 2,
            b'"' => return at + 1,
            _ => at += 1,
        }
    }
    sql.len()
}

/// The end of a block comment whose body starts at `at`: past its first `*/`.
fn comment_end(sql: &[u8], at: usize) -> usize {
    memchr::memmem::find(&sql[at.min(sql.len())..], b"*/").map_or(sql.len(), |n| at + n + 2)
}

/// The dollar-quote tag (`$$`, `$tag$`) starting at `at`, if one does; with `digit_tags`, also
/// one starting with a digit.
fn dollar_tag(sql: &[u8], at: usize, digit_tags: bool) -> Option<&[u8]> {
    let rest = &sql[at + 1..];
    if !digit_tags && rest.first().is_some_and(|b| b.is_ascii_digit()) {
        return None; // $1: a parameter
    }
    let len = rest
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80)
        .count();
    (rest.get(len) == Some(&b'$')).then(|| &sql[at..at + len + 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_found_and_what_is_not_code_is_skipped() {
        let may = |sql: &str| may_call_ml(sql.as_bytes());
        for yes in [
            "SELECT aws_comprehend.detect_sentiment(b, 'en') FROM r",
            "SELECT \"aws_sagemaker\" /* c */ . invoke_endpoint('e', NULL, 1)",
            "SELECT db.AWS_SAGEMAKER\n-- c\n.invoke_endpoint('e', NULL, 1)",
            "SELECT 'it''s', aws_bedrock.invoke_model('m', 'a', 'b', x)",
            "SELECT \"it's\", aws_comprehend.detect_sentiment(x, 'en'), 'a'",
            "SELECT 'a\\', aws_comprehend.detect_sentiment(x, 'en'), 'b'",
            "SELECT E'a\\'', aws_comprehend.detect_sentiment(x, 'en')",
            "SELECT /* /* nested */ aws_comprehend.x() */ 1",
            "SELECT $1, aws_comprehend.detect_sentiment($2, 'en')",
            // A `--` comment ends at a carriage return too (found by the sql fuzz target).
            "SELECT 1 --\r aws_comprehend.detect_sentiment(x, 'en')",
            // Right after an operator character, `--` and `/*` are scanned on.
            "SELECT a @-- c\n, aws_comprehend.detect_sentiment(x, 'en')",
            "SELECT a +/* aws_comprehend.f() */ 1",
        ] {
            assert!(may(yes), "{yes}");
        }
        for no in [
            "SELECT 1 -- aws_comprehend.detect_sentiment(x)",
            "SELECT 'aws_comprehend.detect_sentiment(x)'",
            "SELECT $$aws_sagemaker.invoke_endpoint(1)$$, $t$ aws_comprehend.f() $t$",
            "SELECT E'\\' aws_comprehend.f()'",
            "SELECT aws_comprehend_x.f(1), aws_comprehend FROM t",
            "SELECT x.aws_comprehend FROM t",
            "SELECT \"AWS_COMPREHEND x\".f()",
            "SELECT 1 /* aws_sagemaker.invoke_endpoint() */",
            "SELECT 'unterminated aws_comprehend.f(",
        ] {
            assert!(!may(no), "{no}");
        }
        // `$` inside a name does not open a dollar quote, but one right after a dollar quote
        // does, and so does an `E'` there.
        assert!(may("SELECT a$b$, aws_comprehend.f(1), $b$"));
        assert!(may("$$$$$$$$aws_comprehend.d("));
        assert!(!may("SELECT $$a$$$$ aws_comprehend.f() $$"));
        assert!(may("SELECT $$a$$E'\\'' aws_comprehend.f() '"));
        // After a number too, in each of the tokenizer's forms of numbers.
        for number in ["1", "1.5e-3", "0x1F", "0b1_0", "1_000", "1L", "2."] {
            assert!(
                may(&format!("{number}$$%$$aws_comprehend.e($$$$")),
                "{number}"
            );
        }
        assert!(may("SELECT 1Laws_comprehend.f(1)"));
        // `$1$` is read both ways: a dollar quote (the tokenizer: a call after `$1$…$1$`) and
        // a parameter and a `$` (PostgreSQL: a call after `$1`, `$$ $$`).
        assert!(may("SELECT $1$$ $1$ aws_comprehend.f( $$$$"));
        assert!(may("SELECT $1$$ $$ aws_comprehend.f(1) $1$"));
        // A number ends at its first letter (PostgreSQL 15 reads `1abc` as `1 abc`).
        assert!(may("SELECT 125aws_comprehend.detect_sentiment(x, 'en')"));
        assert!(!may("SELECT x125aws_comprehend.f(1)"));
    }

    #[test]
    fn agrees_with_the_tokenizer_on_calls_it_finds() {
        // Whatever the guard's tokenizer pass reads as a call, this check must report too.
        for sql in [
            "select aws_comprehend.detect_sentiment(body,'en') from r where x = 'aws_sagemaker.f()'",
            "SELECT \"aws_comprehend\".\"detect_sentiment\"(b, 'en')",
            "SELECT $a$ x $a$, aws_sagemaker.invoke_endpoint('e', NULL, $1)",
        ] {
            let guard = super::super::guard::scan(sql).expect("tokenizes");
            assert!(guard.calls_ml && may_call_ml(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn agrees_with_the_tokenizer_on_the_fuzz_seeds() {
        // The sql fuzz target's seeds (and, with PGENRICH_SQL_CORPUS=dir, any corpus): every
        // text the guard reads as calling an ML function is one this check reports.
        let dirs = [
            Some(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/sql").to_owned()),
            std::env::var("PGENRICH_SQL_CORPUS").ok(),
        ];
        let mut checked = 0;
        for dir in dirs.into_iter().flatten() {
            for entry in std::fs::read_dir(&dir).expect("the seeds").flatten() {
                // A corpus a fuzzer is working on loses files as it goes.
                let Ok(bytes) = std::fs::read(entry.path()) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&bytes);
                if super::super::guard::scan(&text).is_some_and(|scan| scan.calls_ml) {
                    assert!(may_call_ml(text.as_bytes()), "missed a call: {text:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "only {checked} seeds call ML functions");
    }
}
