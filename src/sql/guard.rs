//! What is checked on a statement's text before sqlparser sees it, in one linear pass of its
//! tokenizer: whether it calls an ML function at all (a schema-qualified call of
//! `aws_comprehend` or `aws_sagemaker`; a mention in a comment or a literal is not one), and how
//! deeply its expressions nest.
//!
//! sqlparser limits its own recursion while parsing, but not the depth of what it builds: a chain
//! of binary operators (`1+1+…`, `a OR b OR …`, `x::t::t…`) is parsed in a loop into a tree as
//! deep as the chain is long, and walking, printing or dropping that tree recurses once per
//! level. A statement whose estimated depth exceeds [`MAX_DEPTH`] gets PostgreSQL's own answer
//! for such statements, `54001` (PostgreSQL itself fails `SELECT 1+1+…` at about 4,000 terms).

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::plan::PlanError;
use super::ML_SCHEMAS;
use crate::error::SqlState;

/// The deepest expression nesting pgenrich plans (operators in a chain, plus brackets).
pub const MAX_DEPTH: usize = 5_000;

/// What the guard found in a statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// A call `schema.function(` of an ML schema appears outside comments and literals.
    pub calls_ml: bool,
    /// The estimated depth of its deepest expression.
    pub depth: usize,
}

/// Scans `sql`; None when the tokenizer cannot read it (PostgreSQL then reports the error).
pub fn scan(sql: &str) -> Option<Scan> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut scan = Scan {
        calls_ml: false,
        depth: 0,
    };
    // The operator chain of each enclosing bracket level, and their sum (plus one per level).
    let mut levels: Vec<usize> = Vec::new();
    let mut outer = 0usize;
    let mut chain = 0usize;
    // The last three tokens that were not whitespace, for `schema . function (`.
    let mut recent: [Option<&Token>; 3] = [None; 3];
    for token in tokens.iter() {
        match token {
            Token::Whitespace(_) => continue,
            Token::LParen | Token::LBracket | Token::LBrace => {
                if let [Some(Token::Word(schema)), Some(Token::Period), Some(Token::Word(_))] =
                    recent
                {
                    scan.calls_ml |= ML_SCHEMAS
                        .iter()
                        .any(|s| schema.value.eq_ignore_ascii_case(s));
                }
                levels.push(chain);
                outer += chain + 1;
                chain = 0;
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if let Some(enclosing) = levels.pop() {
                    outer -= enclosing + 1;
                    chain = enclosing;
                }
            }
            Token::Comma => chain = 0,
            Token::SemiColon => {
                levels.clear();
                outer = 0;
                chain = 0;
            }
            token if is_operator(token) => chain += 1,
            _ => {}
        }
        scan.depth = scan.depth.max(outer + chain);
        recent = [recent[1], recent[2], Some(token)];
    }
    Some(scan)
}

/// The guard's verdict: Ok(true) when `sql` calls an ML function and may be parsed, Ok(false)
/// when it calls none (or cannot be read), the `54001` error when it nests too deeply.
pub fn check(sql: &str) -> Result<bool, PlanError> {
    verdict(scan(sql))
}

/// [`check`]'s verdict on a scan already made.
pub fn verdict(scan: Option<Scan>) -> Result<bool, PlanError> {
    let Some(scan) = scan else {
        return Ok(false);
    };
    if !scan.calls_ml {
        return Ok(false);
    }
    if scan.depth > MAX_DEPTH {
        return Err(too_deep(scan.depth));
    }
    Ok(true)
}

/// PostgreSQL's error for a statement nested too deeply, with pgenrich's limit.
pub fn too_deep(depth: usize) -> PlanError {
    PlanError {
        code: SqlState::StatementTooComplex,
        message: format!(
            "stack depth limit exceeded: the ML statement's expressions nest about {depth} \
             levels deep, more than pgenrich inspects ({MAX_DEPTH})"
        ),
        hint: Some(
            "Write long chains of OR or of = comparisons as IN (…) or = ANY (array), or split \
             the statement."
                .into(),
        ),
    }
}

/// Tokens that continue an expression chain: every symbol operator, and the keywords that act
/// as operators. Literals, names, punctuation and brackets do not.
fn is_operator(token: &Token) -> bool {
    match token {
        Token::Word(word) => matches!(
            word.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::BETWEEN
                | Keyword::IN
                | Keyword::COLLATE
                | Keyword::AT
                | Keyword::OVERLAPS
        ),
        Token::EOF
        | Token::Number(..)
        | Token::Char(_)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::QuoteDelimitedStringLiteral(_)
        | Token::NationalQuoteDelimitedStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Placeholder(_)
        | Token::Period
        | Token::Colon
        | Token::Whitespace(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(sql: &str) -> usize {
        scan(sql).expect("tokenizes").depth
    }

    #[test]
    fn ml_calls_count_outside_comments_and_literals_only() {
        let calls = |sql: &str| scan(sql).expect("tokenizes").calls_ml;
        assert!(calls(
            "SELECT aws_comprehend.detect_sentiment(b, 'en') FROM r"
        ));
        assert!(calls(
            "SELECT \"AWS_SAGEMAKER\" . invoke_endpoint ('e', NULL, 1)"
        ));
        assert!(calls(
            "SELECT db.aws_sagemaker.invoke_endpoint/* c */('e', NULL, 1)"
        ));
        assert!(!calls("SELECT 1 -- aws_comprehend.detect_sentiment(x)"));
        assert!(!calls("SELECT 'aws_comprehend.detect_sentiment(x)'"));
        assert!(!calls("SELECT $$aws_sagemaker.invoke_endpoint(1)$$"));
        assert!(!calls(
            "SELECT aws_comprehend_x.f(1), aws_comprehend FROM t"
        ));
        assert_eq!(check("SELECT 'unterminated"), Ok(false));
    }

    #[test]
    fn depth_follows_chains_and_brackets() {
        assert_eq!(depth("SELECT a, b FROM t"), 0);
        assert_eq!(depth("SELECT a + b + c"), 2);
        // A comma ends a chain; brackets add a level and their own chain.
        assert_eq!(depth("SELECT a + b, c + (d * e * f)"), 4);
        assert_eq!(depth("SELECT f(a, b) AND x OR y"), 2);
        assert_eq!(depth("SELECT x::int::text"), 2);
        // Statements are measured one by one.
        assert_eq!(depth("SELECT 1+1+1; SELECT 1"), 2);
    }

    #[test]
    fn too_deep_statements_get_54001() {
        let chain = vec!["1"; MAX_DEPTH + 2].join("+");
        let sql = format!("SELECT aws_comprehend.detect_sentiment('a', 'en'), {chain}");
        let error = check(&sql).expect_err("too deep");
        assert_eq!(error.code, SqlState::StatementTooComplex);
        assert!(error.message.contains("stack depth limit exceeded"));
        // Without an ML call nothing is parsed, so nothing is refused: PostgreSQL decides.
        assert_eq!(
            check(&format!("SELECT {chain} -- aws_comprehend.x(")),
            Ok(false)
        );
        let within = vec!["1"; MAX_DEPTH / 2].join("+");
        let sql = format!("SELECT aws_comprehend.detect_sentiment('a', 'en'), {within}");
        assert_eq!(check(&sql), Ok(true));
    }
}
