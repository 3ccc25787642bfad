//! Whether a text too long to tokenize may call an ML function, in one pass over its bytes
//! and without allocating. sqlparser's tokenizer builds a vector of every token (about a
//! hundred bytes each) and its parser a tree of a few hundred bytes per token, so a statement
//! text of a few megabytes costs a planner thread hundreds of megabytes: texts over
//! `max_ml_statement_bytes` are not tokenized. This check decides instead whether such a text
//! is relayed (it certainly calls none) or refused.
//!
//! It must never miss a call that PostgreSQL or the tokenizer would read, so it skips only what
//! both lexers agree is not code — string constants (`'…'` with `''`, `E'…'` with backslash
//! escapes too), quoted identifiers (`"…"`, compared as names), dollar quotes (`$tag$…$tag$`,
//! where a token starts: not after a name character, where `$` belongs to the name), numbers
//! and comments (`--` to a `\n` or `\r`, nested `/* … */`) — and reports any ML schema name
//! followed by a `.` in what is left. Where the two lexers read a construct differently (a `--`
//! or `/*` right after an operator character, which sqlparser may take into the operator; a
//! dollar-quote tag starting with a digit, `$1$`, or holding a character that is not a letter
//! or digit; letters after a parameter, `$1E`; `X'…'`, where sqlparser honours backslashes;
//! the character after a `&>`, which sqlparser takes into the operator), the scan cannot know
//! which reading will run: the text may call one if it names an ML schema anywhere.

use super::ML_SCHEMAS;

/// Whether `sql` may call an ML function: an ML schema's name (bare or quoted) followed, past
/// spaces and comments, by a `.`, outside string constants, dollar quotes and comments.
pub fn may_call_ml(sql: &[u8]) -> bool {
    match scan(sql) {
        Some(calls) => calls,
        None => super::mentions_ml_schema(sql),
    }
}

/// One pass over `sql`: whether it calls an ML function, or None at the first construct the
/// two lexers read differently.
fn scan(sql: &[u8]) -> Option<bool> {
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
                    return Some(true);
                }
                at = end;
            }
            // sqlparser's tokenizer takes the character after a `&>` into the operator.
            b'&' if sql.get(at + 1) == Some(&b'>') => {
                if sql.get(at + 2).is_some_and(|b| !b.is_ascii_whitespace()) {
                    return None;
                }
                at += 2;
            }
            b'-' | b'/' if comment_starts(sql, at) => {
                // sqlparser may read `--` or `/*` right after an operator character as part of
                // the operator (`@-@`); PostgreSQL never does.
                if after_operator(sql, at) {
                    return None;
                }
                at = comment_end(sql, at);
            }
            b'$' if starts_token => {
                let tag = dollar_tag(sql, at)?;
                if tag.is_empty() {
                    // A parameter, `$1`, or a lone `$`. The tokenizer reads `$` and the letters
                    // and digits after it as one placeholder (`$1E'…'` is `$1E` and a string),
                    // PostgreSQL a parameter's digits only.
                    let digits = sql[at + 1..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                    if char_at(&sql[at + 1 + digits..])
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                    {
                        return None;
                    }
                    at += 1 + digits;
                    token_end = at;
                } else {
                    let body = at + tag.len();
                    at = memchr::memmem::find(&sql[body..], tag)
                        .map_or(sql.len(), |n| body + n + tag.len());
                    token_end = at;
                }
            }
            _ if byte.is_ascii_digit()
                || (byte == b'.' && sql.get(at + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                at = number_end(sql, at);
                token_end = at;
            }
            _ if is_name_byte(byte) => {
                let end = at + sql[at..].iter().take_while(|&&b| is_name_byte(b)).count();
                let word = &sql[at..end];
                if word.len() == 1 && sql.get(end) == Some(&b'\'') && starts_token {
                    match byte {
                        // E'…': backslash escapes.
                        b'e' | b'E' => {
                            at = string_end(sql, end + 1, true);
                            continue;
                        }
                        // X'…': backslash escapes for sqlparser, not for PostgreSQL.
                        b'x' | b'X' => {
                            let plain = string_end(sql, end + 1, false);
                            if string_end(sql, end + 1, true) != plain {
                                return None;
                            }
                            at = plain;
                            continue;
                        }
                        _ => {}
                    }
                }
                if is_ml_schema(word) && dot_follows(sql, end) {
                    return Some(true);
                }
                at = end;
            }
            _ => at += 1,
        }
    }
    Some(false)
}

/// The end of the number starting at `at` (a digit, or a `.` before one), as the tokenizer
/// reads numbers: digits with `_` separators, `0x`/`0o`/`0b` and their digits (not after a
/// `.`), or a fraction after one `.` and an exponent, and an `L` suffix. A name starts after it
/// (PostgreSQL 15 reads `1abc` as `1 abc`).
fn number_end(sql: &[u8], at: usize) -> usize {
    if sql[at] == b'.' {
        return exponent_end(sql, digits_end(sql, at + 1, 10));
    }
    let radix = match (sql[at], sql.get(at + 1).map(u8::to_ascii_lowercase)) {
        (b'0', Some(b'x')) => 16,
        (b'0', Some(b'o')) => 8,
        (b'0', Some(b'b')) => 2,
        _ => 10,
    };
    if radix != 10 {
        return digits_end(sql, at + 2, radix);
    }
    let mut end = digits_end(sql, at, 10);
    if sql.get(end) == Some(&b'.') {
        end = digits_end(sql, end + 1, 10);
    }
    exponent_end(sql, end)
}

/// Past the digits of `radix` and `_` separators from `from`.
fn digits_end(sql: &[u8], from: usize, radix: u32) -> usize {
    from + sql[from.min(sql.len())..]
        .iter()
        .take_while(|&&b| b == b'_' || char::from(b).is_digit(radix))
        .count()
}

/// Past an exponent (`e5`, `E-3`) and an `L` suffix at `end`, if there are.
fn exponent_end(sql: &[u8], mut end: usize) -> usize {
    if matches!(sql.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(sql.get(end + 1), Some(b'+' | b'-')));
        if sql
            .get(end + 1 + sign)
            .is_some_and(|b| b.is_ascii_digit() || *b == b'_')
        {
            end = digits_end(sql, end + 1 + sign, 10);
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
            Some(_) if comment_starts(sql, at) => at = comment_end(sql, at),
            Some(b'.') => return true,
            _ => return false,
        }
    }
}

/// Whether a comment (`--` or `/*`) starts at `at`.
fn comment_starts(sql: &[u8], at: usize) -> bool {
    matches!(sql.get(at..at + 2), Some(b"--" | b"/*"))
}

/// The end of the comment starting at `at`: a `--` comment past its line's end (a `\n` or, as
/// for both lexers, a `\r`), a block comment past the `*/` that closes it, counting the
/// comments nested in it as both lexers do.
fn comment_end(sql: &[u8], at: usize) -> usize {
    if sql[at] == b'-' {
        return sql[at..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map_or(sql.len(), |n| at + n + 1);
    }
    let mut depth = 0usize;
    let mut at = at;
    while let Some(n) = memchr::memchr2(b'/', b'*', &sql[at.min(sql.len())..]) {
        at += n;
        match sql.get(at..at + 2) {
            Some(b"/*") => depth += 1,
            Some(b"*/") => {
                depth -= 1;
                if depth == 0 {
                    return at + 2;
                }
            }
            _ => {
                at += 1;
                continue;
            }
        }
        at += 2;
    }
    sql.len()
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

/// The dollar-quote tag (`$$`, `$tag$`) starting at `at`: empty when none does (a `$` or a
/// parameter `$1`), None when PostgreSQL and the tokenizer see different tags there.
fn dollar_tag(sql: &[u8], at: usize) -> Option<&[u8]> {
    let rest = &sql[at + 1..];
    // PostgreSQL's tag: letters, digits (not first), `_` and any non-ASCII byte.
    let postgres = match rest.first() {
        Some(b) if b.is_ascii_digit() => None,
        _ => {
            let len = rest
                .iter()
                .take_while(|&&b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80)
                .count();
            (rest.get(len) == Some(&b'$')).then_some(len)
        }
    };
    // The tokenizer's: Unicode letters and digits (first too), and `_`.
    let mut len = 0;
    while let Some(c) = char_at(&rest[len..]).filter(|c| c.is_alphanumeric() || *c == '_') {
        len += c.len_utf8();
    }
    let tokenizer = (rest.get(len) == Some(&b'$')).then_some(len);
    match (postgres, tokenizer) {
        (None, None) => Some(&[]),
        (Some(a), Some(b)) if a == b => Some(&sql[at..at + a + 2]),
        _ => None,
    }
}

/// The character `bytes` start with, if they start with valid UTF-8.
fn char_at(bytes: &[u8]) -> Option<char> {
    let head = &bytes[..bytes.len().min(4)];
    let valid = match std::str::from_utf8(head) {
        Ok(valid) => valid,
        Err(error) => std::str::from_utf8(&head[..error.valid_up_to()]).ok()?,
    };
    valid.chars().next()
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
            // Nested comments end where both lexers end them.
            "SELECT /* /* */ ' */ aws_comprehend.f(1) -- '",
            "SELECT aws_comprehend /* /* */ */ .f(1)",
            "SELECT $1, aws_comprehend.detect_sentiment($2, 'en')",
            // A `--` comment ends at a carriage return too (found by the sql fuzz target).
            "SELECT 1 --\r aws_comprehend.detect_sentiment(x, 'en')",
            // Right after an operator character, `--` and `/*` may belong to sqlparser's
            // operator: the lexers differ, and these texts name an ML schema.
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
            "SELECT /* /* nested */ aws_comprehend.x() */ 1",
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
        // Where the lexers differ, a text naming an ML schema anywhere may call one.
        for unsure in [
            "SELECT X'\\'' aws_comprehend.f(1) ''",
            "SELECT a &>' aws_comprehend.f(1) ''",
            "SELECT $1E'\\''' 'aws_comprehend.f(1)'",
            "SELECT $a\u{66a}b$ 'aws_comprehend.f(1)'",
        ] {
            assert_eq!(scan(unsure.as_bytes()), None, "{unsure}");
            assert!(may(unsure), "{unsure}");
        }
        assert!(!may("SELECT X'1F', $1::text, 'aws_comprehend.f(1)'"));
        // `$1$` is a dollar quote for the tokenizer (a call after `$1$…$1$`) and a parameter
        // and a `$` for PostgreSQL (a call after `$1`, `$$ $$`): the lexers differ.
        assert!(may("SELECT $1$$ $1$ aws_comprehend.f( $$$$"));
        assert!(may("SELECT $1$$ $$ aws_comprehend.f(1) $1$"));
        // A tag with a character that is not a letter (U+066A): a placeholder and more for the
        // tokenizer, a dollar quote for PostgreSQL (found by the sql fuzz target).
        assert!(may(
            "SELECT $a\u{66a}b$ x, aws_sagemaker.invoke_endpoint('e', NULL, 1)"
        ));
        assert!(!may(
            "SELECT $ä1$ aws_sagemaker.invoke_endpoint('e', NULL, 1) $ä1$"
        ));
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

    #[test]
    fn agrees_with_the_tokenizer_on_random_texts() {
        // Texts strung together from the pieces where the lexers differ or quotes begin and
        // end: whatever the tokenizer reads as a call, the scan reports (directly, or as a
        // construct the lexers read differently in a text naming an ML schema).
        const PIECES: &[&str] = &[
            "$",
            "$$",
            "$$$",
            "$a$",
            "$_$",
            "$ä$",
            "$1$",
            "$1",
            "a$",
            "1",
            "0",
            "0x1f",
            "0b",
            "0o",
            "1e5",
            "1.",
            ".5",
            "_1",
            "1_",
            "L",
            "E",
            "e",
            "'",
            "''",
            "E'",
            "X'",
            "B'",
            "N'",
            "U&'",
            "\\",
            "\"",
            "\"\"",
            "--",
            "/*",
            "*/",
            "\r",
            "\n",
            " ",
            "\t",
            "\u{b}",
            "\u{c}",
            "\u{66a}",
            "ä",
            "\u{a0}",
            "x",
            "aws_comprehend",
            "aws_comprehend.f(",
            ".",
            "(",
            ")",
            ";",
            "@",
            "-",
            "/",
            "*",
            "+",
            "_",
            "#",
            "?",
            "`",
            "[",
            "]",
            ":",
            "::",
            "%",
            "|",
            "&",
            "~",
            "!",
            "^",
            "<",
            ">",
            "=",
            "&>",
            "?|",
            "@-@",
            "<->",
            "##",
            "|/",
            "||/",
            "~~*",
            "!=",
            "->>",
            "#>>",
            "^@",
            "@@",
            "<<|",
            "&<|",
            "?-|",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            // xorshift64: the same texts on every run.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        let (runs, mut found, mut unsure) = (100_000, 0, 0);
        for _ in 0..runs {
            let mut text: String = (0..1 + next() % 24)
                .map(|_| PIECES[next() % PIECES.len()])
                .collect();
            if !text.contains("aws_comprehend") {
                text.push_str(" aws_comprehend.f(");
            }
            match scan(text.as_bytes()) {
                Some(true) => found += 1,
                None => unsure += 1,
                Some(false) => {}
            }
            if super::super::guard::scan(&text).is_some_and(|scan| scan.calls_ml) {
                assert!(may_call_ml(text.as_bytes()), "missed a call: {text:?}");
            }
        }
        // The scan decides most texts on its own.
        assert!(
            found > runs / 5 && unsure < runs / 4,
            "{found} found, {unsure} unsure"
        );
    }
}
