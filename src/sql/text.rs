//! Text-level work on statements that sqlparser alone cannot do: splitting a Query message into
//! its statements (keeping each one's original text), and rewriting the two PostgreSQL forms
//! sqlparser 0.64 does not parse. Both use sqlparser's tokenizer, so literals, comments and
//! quoted identifiers are never cut or rewritten. And a byte check of a text's first word, so
//! that statements which cannot be cursor commands, DECLARE or EXPLAIN are not parsed for it.

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use super::ML_SCHEMAS;

/// Marker appended to a function name by the `(f(…)).*` rewrite.
pub const ALL_FIELDS_SUFFIX: &str = "__pgenrich_all_fields";

/// The statements of `sql` as their original text, split at top-level semicolons; empty ones
/// are left out. Text the tokenizer cannot read comes back whole.
pub fn split_statements(sql: &str) -> Vec<&str> {
    // Without a `;` anywhere there is nothing to split at: the usual one-statement text is not
    // tokenized (the hook, DECLARE and EXPLAIN detection and the planners each ask).
    if memchr::memchr(b';', sql.as_bytes()).is_none() {
        return [sql].into_iter().filter(|p| !p.trim().is_empty()).collect();
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else {
        return vec![sql];
    };
    let offsets = LineOffsets::new(sql);
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut depth = 0usize;
    for token in &tokens {
        match token.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::SemiColon if depth == 0 => {
                let at = offsets.at(token.span.start);
                pieces.push(&sql[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    pieces.push(&sql[start.min(sql.len())..]);
    pieces
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .collect()
}

/// Whether the first word of `sql` (past whitespace and `--` comments) may be one of `words`
/// (upper case), in a few byte comparisons: false only when it certainly is not, so callers may
/// skip tokenizing and parsing. Whatever sqlparser's tokenizer skips before the first word is
/// skipped here too (a vertical tab, which `trim_ascii_start` keeps); a leading block comment or
/// non-ASCII byte (perhaps Unicode whitespace) is left to the tokenizer (true).
pub fn first_word_may_be(sql: &[u8], words: &[&str]) -> bool {
    let mut rest = sql;
    loop {
        let at = rest
            .iter()
            .position(|b| !(b.is_ascii_whitespace() || *b == 0x0b))
            .unwrap_or(rest.len());
        let trimmed = &rest[at..];
        if trimmed.first().is_some_and(|b| !b.is_ascii()) {
            // Perhaps Unicode whitespace, which the tokenizer skips.
            return true;
        }
        if let Some(comment) = trimmed.strip_prefix(b"--") {
            // To the line's end: a `\n` or, as for PostgreSQL and the tokenizer, a `\r`.
            rest = comment
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
                .map_or(&[][..], |at| &comment[at..]);
        } else if trimmed.starts_with(b"/*") {
            // A leading block comment: let the tokenizer decide.
            return true;
        } else {
            rest = trimmed;
            break;
        }
    }
    words.iter().any(|word| {
        rest.get(..word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word.as_bytes()))
    })
}

/// The tokens of `sql` other than whitespace and comments, each with its byte range in `sql`;
/// None when the tokenizer cannot read it.
pub fn significant_tokens(sql: &str) -> Option<Vec<(Token, std::ops::Range<usize>)>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    let offsets = LineOffsets::new(sql);
    Some(
        tokens
            .into_iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .map(|t| {
                let range = offsets.at(t.span.start)..offsets.at(t.span.end);
                (t.token, range)
            })
            .collect(),
    )
}

/// Rewrites the two PostgreSQL forms sqlparser 0.64 cannot parse, on the original text:
/// `(aws_comprehend.detect_sentiment(…)).*` becomes a call of a marked name, and
/// `VARIADIC ARRAY[a, b]` inside an ML call's arguments becomes `a, b`.
pub fn rewrite_unparsable_forms(sql: &str) -> String {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else {
        return sql.to_owned();
    };
    let tokens: Vec<&TokenWithSpan> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let offsets = LineOffsets::new(sql);
    let span = |t: &TokenWithSpan| (offsets.at(t.span.start), offsets.at(t.span.end));
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let is_ml_word = |t: &TokenWithSpan| matches!(&t.token, Token::Word(w) if ML_SCHEMAS.contains(&w.value.to_ascii_lowercase().as_str()));
    for i in 0..tokens.len() {
        // An ML call: schema . name (
        if !(is_ml_word(tokens[i])
            && matches!(tokens.get(i + 1).map(|t| &t.token), Some(Token::Period))
            && matches!(tokens.get(i + 2).map(|t| &t.token), Some(Token::Word(_)))
            && matches!(tokens.get(i + 3).map(|t| &t.token), Some(Token::LParen)))
        {
            continue;
        }
        let open = i + 3;
        let mut depth = 0usize;
        let mut close = None;
        for (j, token) in tokens.iter().enumerate().skip(open) {
            match token.token {
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen | Token::RBracket => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(j);
                        break;
                    }
                }
                _ => {}
            }
            // VARIADIC ARRAY[ … ] directly in this call's arguments.
            if depth == 1 {
                if let (Token::Word(v), Some(Token::Word(a)), Some(Token::LBracket)) = (
                    &token.token,
                    tokens.get(j + 1).map(|t| &t.token),
                    tokens.get(j + 2).map(|t| &t.token),
                ) {
                    if v.value.eq_ignore_ascii_case("variadic")
                        && a.value.eq_ignore_ascii_case("array")
                    {
                        let mut inner = 0usize;
                        for (k, t) in tokens.iter().enumerate().skip(j + 2) {
                            match t.token {
                                Token::LBracket | Token::LParen => inner += 1,
                                Token::RBracket | Token::RParen => {
                                    inner -= 1;
                                    if inner == 0 {
                                        edits.push((
                                            span(token).0,
                                            span(tokens[j + 2]).1,
                                            String::new(),
                                        ));
                                        edits.push((span(t).0, span(t).1, String::new()));
                                        break;
                                    }
                                }
                                _ => {}
                            }
                            let _ = k;
                        }
                    }
                }
            }
        }
        let Some(close) = close else { continue };
        // ( call ) . *  →  call with a marked name
        let wrapped = i > 0
            && matches!(tokens[i - 1].token, Token::LParen)
            && matches!(tokens.get(close + 1).map(|t| &t.token), Some(Token::RParen))
            && matches!(tokens.get(close + 2).map(|t| &t.token), Some(Token::Period))
            && matches!(tokens.get(close + 3).map(|t| &t.token), Some(Token::Mul));
        if wrapped {
            if let Token::Word(name) = &tokens[i + 2].token {
                edits.push((span(tokens[i - 1]).0, span(tokens[i - 1]).1, String::new()));
                let (start, end) = span(tokens[i + 2]);
                edits.push((
                    start,
                    end,
                    format!("{}{ALL_FIELDS_SUFFIX}", name.value.to_ascii_lowercase()),
                ));
                edits.push((
                    span(tokens[close + 1]).0,
                    span(tokens[close + 3]).1,
                    String::new(),
                ));
            }
        }
    }
    if edits.is_empty() {
        return sql.to_owned();
    }
    // One pass over the text, whatever the number of edits (overlapping ones are dropped).
    edits.sort_by_key(|e| e.0);
    let mut text = String::with_capacity(sql.len());
    let mut copied = 0;
    for (start, end, replacement) in edits {
        if copied <= start
            && start <= end
            && end <= sql.len()
            && sql.is_char_boundary(start)
            && sql.is_char_boundary(end)
        {
            text.push_str(&sql[copied..start]);
            text.push_str(&replacement);
            copied = end;
        }
    }
    text.push_str(&sql[copied..]);
    text
}

/// Converts tokenizer locations (1-based line and character column) to byte offsets in time
/// linear in the text, whatever the shape of its lines: on an ASCII line a column is a byte
/// count; on others the walk resumes where the previous lookup on that line stopped, so
/// lookups in text order (as every caller makes them) walk each line once.
struct LineOffsets<'a> {
    sql: &'a str,
    /// Byte offset where each line starts, and whether the line is ASCII.
    lines: Vec<(usize, bool)>,
    /// The last lookup on a non-ASCII line: line index, character column, byte offset.
    cursor: std::cell::Cell<(usize, usize, usize)>,
}

impl<'a> LineOffsets<'a> {
    fn new(sql: &'a str) -> Self {
        let mut lines = Vec::new();
        let mut start = 0;
        for line in sql.split_inclusive('\n') {
            lines.push((start, line.is_ascii()));
            start += line.len();
        }
        if lines.is_empty() {
            lines.push((0, true));
        }
        LineOffsets {
            sql,
            lines,
            cursor: std::cell::Cell::new((usize::MAX, 0, 0)),
        }
    }

    fn at(&self, location: Location) -> usize {
        let line = (location.line as usize).saturating_sub(1);
        let Some(&(line_start, ascii)) = self.lines.get(line) else {
            return self.sql.len();
        };
        let line_end = self.lines.get(line + 1).map_or(self.sql.len(), |l| l.0);
        let column = (location.column as usize).saturating_sub(1);
        if ascii {
            return (line_start + column).min(line_end);
        }
        let (cursor_line, cursor_column, cursor_byte) = self.cursor.get();
        let (mut at_column, mut at_byte) = if cursor_line == line && cursor_column <= column {
            (cursor_column, cursor_byte)
        } else {
            (0, line_start)
        };
        let mut chars = self.sql[at_byte..line_end].chars();
        while at_column < column {
            let Some(c) = chars.next() else {
                break;
            };
            at_byte += c.len_utf8();
            at_column += 1;
        }
        self.cursor.set((line, at_column, at_byte));
        if at_column < column {
            return self.sql.len();
        }
        at_byte
    }
}

/// Parses `sql` with every unquoted identifier folded as PostgreSQL's lexer folds it
/// ([`fold_identifier`]), so that the planners can compare names as the database does: an alias
/// `Label` and a reference `LABEL` are one name, `"Label"` another. Printing a folded statement
/// back changes no name's meaning. Text after the statements that sqlparser would leave unread
/// is an error.
pub fn parse_folded(sql: &str) -> Result<Vec<Statement>, ParserError> {
    let dialect = PostgreSqlDialect {};
    let mut tokens = Tokenizer::new(&dialect, sql).tokenize_with_location()?;
    for token in &mut tokens {
        if let Token::Word(word) = &mut token.token {
            if word.quote_style.is_none() {
                word.value.make_ascii_lowercase();
            }
        }
    }
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let statements = parser.parse_statements()?;
    // sqlparser stops without an error at an END after a statement (the end of a block in
    // other dialects), leaving the rest unread: that is a syntax error in PostgreSQL, and the
    // rest may hold anything, ML calls included.
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(ParserError::ParserError(format!(
            "syntax error at or near \"{}\"",
            next.token
        )));
    }
    Ok(statements)
}

/// A name as PostgreSQL folds it: unquoted in lower case, ASCII letters only (what
/// `downcase_identifier` does in a UTF-8 database), quoted as written.
pub fn fold_identifier(value: &str, quoted: bool) -> String {
    if quoted {
        value.to_owned()
    } else {
        value.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquoted_names_parse_folded_as_postgres_folds_them() {
        let printed = |sql: &str| {
            parse_folded(sql)
                .expect("parses")
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            printed("SELECT Ä.ÄbC AS Label, \"Mixed\" FROM T AS Ä ORDER BY LABEL"),
            ["SELECT Ä.Äbc AS label, \"Mixed\" FROM t AS Ä ORDER BY label"]
        );
        // Keywords, literals and comments are not names.
        assert_eq!(
            printed("select 'ABC' AS x WHERE TRUE -- Comment"),
            ["SELECT 'ABC' AS x WHERE true"]
        );
    }

    #[test]
    fn statements_split_at_top_level_semicolons_only() {
        assert_eq!(
            split_statements("SELECT 1; SELECT ';' AS x; ; SELECT $$a;b$$ -- c;d\n, (1);"),
            vec![
                "SELECT 1",
                " SELECT ';' AS x",
                " SELECT $$a;b$$ -- c;d\n, (1)"
            ]
        );
        assert_eq!(split_statements("SELECT 1"), vec!["SELECT 1"]);
        assert!(split_statements(" ; ").is_empty());
        // Without a semicolon, as the tokenizer would have it: one piece, or none when blank.
        assert_eq!(split_statements("SELECT 'a' -- c"), vec!["SELECT 'a' -- c"]);
        assert_eq!(
            split_statements("SELECT 'unterminated"),
            vec!["SELECT 'unterminated"]
        );
        assert!(split_statements(" \n\t").is_empty());
    }

    #[test]
    fn unparsable_forms_are_rewritten() {
        assert_eq!(
            rewrite_unparsable_forms("SELECT (aws_comprehend.detect_sentiment(b, 'en')).* FROM r"),
            "SELECT aws_comprehend.detect_sentiment__pgenrich_all_fields(b, 'en') FROM r"
        );
        assert_eq!(
            rewrite_unparsable_forms(
                "SELECT aws_sagemaker.invoke_endpoint('m', 1, VARIADIC ARRAY[a, (b)])"
            ),
            "SELECT aws_sagemaker.invoke_endpoint('m', 1, a, (b))"
        );
        assert_eq!(
            rewrite_unparsable_forms("SELECT 'VARIADIC ARRAY[1]'"),
            "SELECT 'VARIADIC ARRAY[1]'"
        );
    }
}
