//! Cursors over ML statements, as plain data: `DECLARE name CURSOR FOR <ML SELECT>` becomes a
//! cursor of pgenrich's over the streaming plan's base statement, and the FETCH, MOVE and CLOSE
//! that name it are rewritten to that cursor (the session scores each FETCH's rows).
//!
//! The cursor pgenrich declares upstream is named after the client's name and the base
//! statement ([`upstream_name`]): declaring the same ML cursor twice fails upstream as it would
//! natively (`42P03`), and a cursor re-declared over another statement never gets the rows of
//! the earlier one. FETCH, MOVE and CLOSE are read with sqlparser's tokenizer (its parser has no
//! MOVE), and only the cursor's name is replaced in the client's text, so that every direction
//! form reaches PostgreSQL as written.

use std::hash::{Hash, Hasher};
use std::ops::Range;

use sqlparser::ast::{DeclareType, Statement};
use sqlparser::tokenizer::Token;

use super::plan::{self, unsupported, PlanError, StreamingPlan};
use super::residual::{self, ResidualPlan};
use super::text::{self, rewrite_unparsable_forms, significant_tokens};
use crate::error::SqlState;

/// A `DECLARE … CURSOR FOR` an ML SELECT, planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarePlan {
    /// The client's cursor name, as PostgreSQL folds it.
    pub name: String,
    /// The cursor's name upstream.
    pub upstream: String,
    /// `WITH HOLD`: the cursor outlives the transaction that commits it.
    pub hold: bool,
    pub query: CursorQuery,
}

/// How a cursor's rows get their ML results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorQuery {
    /// Scored per FETCH: `sql` declares pgenrich's cursor over the base statement, and `plan`
    /// scores each FETCH's rows.
    Streaming { sql: String, plan: StreamingPlan },
    /// Scored whole at DECLARE: the residual statement declares pgenrich's cursor over the
    /// finished rows, which FETCH then reads as they are.
    Residual(Box<ResidualPlan>),
}

impl DeclarePlan {
    /// The DECLARE of pgenrich's cursor over the base statement, if the cursor is scored per
    /// FETCH.
    pub fn streaming_sql(&self) -> Option<&str> {
        match &self.query {
            CursorQuery::Streaming { sql, .. } => Some(sql),
            CursorQuery::Residual(_) => None,
        }
    }
}

/// A statement naming a cursor pgenrich holds (or ending all of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorCommand {
    /// `FETCH … name`, rewritten to the upstream cursor.
    Fetch { name: String, sql: String },
    /// `MOVE … name`, rewritten.
    Move { name: String, sql: String },
    /// `CLOSE name`, rewritten.
    Close { name: String, sql: String },
    /// `CLOSE ALL`: relayed; every cursor is gone.
    CloseAll,
    /// A `DECLARE name` without ML calls: relayed; the name is the client's own cursor now.
    Redeclare { name: String },
    /// `DISCARD ALL`: relayed; every cursor, prepared statement and portal is gone.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] name` (any statement's: the session knows which are ML ones);
    /// `at` is where the name is written in the text.
    Deallocate { name: String, at: Range<usize> },
    /// `DEALLOCATE [PREPARE] ALL`: relayed; every prepared statement is gone.
    DeallocateAll,
}

impl CursorCommand {
    /// The client's cursor name it is about, if one.
    pub fn name(&self) -> Option<&str> {
        match self {
            CursorCommand::Fetch { name, .. }
            | CursorCommand::Move { name, .. }
            | CursorCommand::Close { name, .. }
            | CursorCommand::Redeclare { name } => Some(name),
            CursorCommand::CloseAll
            | CursorCommand::DiscardAll
            | CursorCommand::Deallocate { .. }
            | CursorCommand::DeallocateAll => None,
        }
    }
}

/// The name of the cursor pgenrich declares upstream for the client's cursor `name` over
/// `query`: short enough for PostgreSQL's 63-byte names whatever the client's.
pub fn upstream_name(name: &str, query: &str) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    query.hash(&mut hasher);
    format!("pgenrich.c.{:016x}", hasher.finish())
}

/// Plans `text` if it is a `DECLARE … CURSOR FOR <query>` (None: it is not one). The query must
/// stream; `BINARY` is refused (pgenrich's columns are text or the client's Bind formats).
pub fn declare(text: &str) -> Option<Result<DeclarePlan, PlanError>> {
    if !text::first_word_may_be(text.as_bytes(), &["DECLARE"])
        || text::split_statements(text).len() > 1
    {
        // Not a DECLARE, or several statements: not parsed whole (see `super::inspect`).
        return None;
    }
    let mut statements = text::parse_folded(&rewrite_unparsable_forms(text)).ok()?;
    let Some(Statement::Declare { mut stmts, .. }) = statements.pop() else {
        return None;
    };
    if !statements.is_empty() || stmts.len() != 1 {
        return None;
    }
    let declare = stmts.pop()?;
    if declare.declare_type != Some(DeclareType::Cursor) || declare.names.len() != 1 {
        return None;
    }
    let query = declare.for_query.as_ref()?.to_string();
    let name = &declare.names[0];
    Some(plan_declare(
        text::fold_identifier(&name.value, name.quote_style.is_some()),
        &declare,
        &query,
    ))
}

fn plan_declare(
    name: String,
    declare: &sqlparser::ast::Declare,
    query: &str,
) -> Result<DeclarePlan, PlanError> {
    if declare.binary == Some(true) {
        return Err(unsupported(
            "DECLARE BINARY CURSOR over an ML statement is not supported",
            "Declare the cursor without BINARY; a driver's binary results (a FETCH through the \
             extended protocol with binary result formats) are supported.",
        ));
    }
    let upstream = upstream_name(&name, query);
    let mut prefix = format!("DECLARE \"{upstream}\"");
    match declare.sensitive {
        Some(true) => prefix.push_str(" INSENSITIVE"),
        Some(false) => prefix.push_str(" ASENSITIVE"),
        None => {}
    }
    match declare.scroll {
        Some(true) => prefix.push_str(" SCROLL"),
        Some(false) => prefix.push_str(" NO SCROLL"),
        None => {}
    }
    let hold = declare.hold == Some(true);
    prefix.push_str(if hold {
        " CURSOR WITH HOLD FOR "
    } else {
        " CURSOR FOR "
    });
    let query = match plan::plan(query) {
        Ok(plan) => CursorQuery::Streaming {
            sql: format!("{prefix}{}", plan.base_sql),
            plan,
        },
        Err(error) if error.code == SqlState::FeatureNotSupported => match residual::plan(query) {
            Ok(plan) if plan.modifies.is_none() => {
                CursorQuery::Residual(Box::new(plan.declared_as(prefix, hold)))
            }
            Ok(_) => {
                return Err(unsupported(
                    "a cursor's query cannot write",
                    "Declare the cursor over a SELECT.",
                ))
            }
            Err(error) => return Err(not_for_cursors(error)),
        },
        Err(error) => return Err(error),
    };
    Ok(DeclarePlan {
        name,
        upstream,
        hold,
        query,
    })
}

/// A planner's refusal, said of a cursor, with the way around it.
fn not_for_cursors(error: PlanError) -> PlanError {
    match error.code {
        SqlState::FeatureNotSupported => PlanError {
            message: format!(
                "a cursor over this ML statement is not supported: {}",
                error.message
            ),
            hint: Some(format!(
                "{} Or materialise the statement first (CREATE TEMP TABLE t AS <the statement>), \
                 then declare the cursor over t.",
                error.hint.as_deref().unwrap_or_default()
            )),
            ..error
        },
        _ => error,
    }
}

/// Reads `text` as a FETCH, MOVE, CLOSE or DECLARE about a cursor `held` knows (client name →
/// upstream name), or as DISCARD ALL or DEALLOCATE. None: none of these, several statements, or
/// another cursor. The rewritten text is the client's, with only the cursor's name replaced.
pub fn command(text: &str, held: impl Fn(&str) -> Option<String>) -> Option<CursorCommand> {
    let mut tokens = significant_tokens(text)?;
    while tokens.last().is_some_and(|(t, _)| *t == Token::SemiColon) {
        tokens.pop();
    }
    if tokens.iter().any(|(t, _)| *t == Token::SemiColon) {
        return None;
    }
    let keyword = |token: &Token, word: &str| matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word));
    let (first, _) = tokens.first()?;
    if keyword(first, "DISCARD") {
        return (tokens.len() == 2 && keyword(&tokens[1].0, "ALL"))
            .then_some(CursorCommand::DiscardAll);
    }
    if keyword(first, "DEALLOCATE") {
        let named = match tokens.get(1..)? {
            [(prepare, _), rest @ ..] if keyword(prepare, "PREPARE") => rest,
            rest => rest,
        };
        return match named {
            [(all, _)] if keyword(all, "ALL") => Some(CursorCommand::DeallocateAll),
            [(token, range)] => Some(CursorCommand::Deallocate {
                name: word_name(token)?,
                at: range.clone(),
            }),
            _ => None,
        };
    }
    if keyword(first, "DECLARE") {
        let name = word_name(&tokens.get(1)?.0)?;
        held(&name)?;
        return Some(CursorCommand::Redeclare { name });
    }
    if keyword(first, "CLOSE") && tokens.len() == 2 && keyword(&tokens[1].0, "ALL") {
        return Some(CursorCommand::CloseAll);
    }
    let kind = ["FETCH", "MOVE", "CLOSE"]
        .into_iter()
        .find(|k| keyword(first, k))?;
    let (last, range) = tokens.get(1..)?.last()?;
    let name = word_name(last)?;
    let upstream = held(&name)?;
    let sql = rename(text, range.clone(), &upstream);
    Some(match kind {
        "FETCH" => CursorCommand::Fetch { name, sql },
        "MOVE" => CursorCommand::Move { name, sql },
        _ => CursorCommand::Close { name, sql },
    })
}

/// `text` with the name written at `at` replaced by `name`, quoted.
pub fn rename(text: &str, at: Range<usize>, name: &str) -> String {
    let before = &text[..at.start];
    // A space keeps the quoted name from running into a quoted word just before it (`"a"c`
    // would become one identifier `"a""…"`).
    let space = if before.ends_with(|c: char| c.is_whitespace()) {
        ""
    } else {
        " "
    };
    format!(
        "{before}{space}\"{}\"{}",
        name.replace('"', "\"\""),
        &text[at.end..]
    )
}

/// A word token as a folded name (None: another token).
fn word_name(token: &Token) -> Option<String> {
    match token {
        Token::Word(word) => Some(text::fold_identifier(
            &word.value,
            word.quote_style.is_some(),
        )),
        _ => None,
    }
}

/// Whether `sql` may be a statement [`command`] reads (its first word is one of theirs), for
/// the relay to hand it over while the session holds cursors: a few byte comparisons. It must
/// say yes to everything `command` reads, so whatever sqlparser's tokenizer skips as whitespace
/// before the first word is skipped here too (a vertical tab, which `trim_ascii_start` keeps),
/// or, outside ASCII, left to the tokenizer.
pub fn may_be_command(sql: &[u8]) -> bool {
    text::first_word_may_be(
        sql,
        &["FETCH", "MOVE", "CLOSE", "DISCARD", "DECLARE", "DEALLOCATE"],
    )
}

/// Whether `sql` may be a DISCARD ALL or DEALLOCATE that [`command`] reads, for the relay to
/// hand it over while the session has ML prepared statements (but no cursors over ML
/// statements): as [`may_be_command`].
pub fn may_end_statements(sql: &[u8]) -> bool {
    text::first_word_may_be(sql, &["DISCARD", "DEALLOCATE"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(name: &str) -> Option<String> {
        (name == "c" || name == "Mixed").then(|| format!("up.{name}"))
    }

    #[test]
    fn declare_plans_the_query_and_keeps_the_options() {
        let plan = declare(
            "DECLARE C NO SCROLL CURSOR WITH HOLD FOR \
             SELECT id, aws_comprehend.detect_sentiment(body, 'en') FROM reviews",
        )
        .expect("a DECLARE")
        .expect("planned");
        assert_eq!(plan.name, "c");
        assert!(plan.hold);
        let CursorQuery::Streaming {
            sql,
            plan: streaming,
        } = &plan.query
        else {
            panic!("a streaming cursor: {plan:?}")
        };
        assert_eq!(
            sql,
            &format!(
                "DECLARE \"{}\" NO SCROLL CURSOR WITH HOLD FOR {}",
                plan.upstream, streaming.base_sql
            )
        );
        assert_eq!(streaming.calls.len(), 1);
        let quoted = declare(
            "declare \"Mixed\" scroll cursor for select aws_sagemaker.invoke_endpoint('e', NULL, $1)",
        )
        .expect("a DECLARE")
        .expect("planned");
        assert_eq!(quoted.name, "Mixed");
        assert!(!quoted.hold);
        assert!(
            matches!(&quoted.query, CursorQuery::Streaming { sql, .. } if sql.contains(" SCROLL CURSOR FOR ")),
            "{quoted:?}"
        );
        assert_ne!(quoted.upstream, plan.upstream);
        assert!(quoted.upstream.len() < 64);
        assert_eq!(
            declare("SELECT aws_comprehend.detect_sentiment('a', 'en')"),
            None
        );
        // Past comments and whatever whitespace the tokenizer skips.
        let after = "DECLARE c CURSOR FOR SELECT aws_comprehend.detect_sentiment('a', 'en')";
        for lead in ["-- c\n\x0b", "/* c */"] {
            assert!(declare(&format!("{lead}{after}")).is_some(), "{lead:?}");
        }
    }

    #[test]
    fn declare_runs_other_statements_whole_and_refuses_binary() {
        let binary = declare(
            "DECLARE c BINARY CURSOR FOR SELECT aws_comprehend.detect_sentiment(b, 'en') FROM t",
        )
        .expect("a DECLARE")
        .expect_err("refused");
        assert_eq!(binary.code, SqlState::FeatureNotSupported);
        let sorted = declare(
            "DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT id FROM t \
             ORDER BY (aws_comprehend.detect_sentiment(b, 'en')).sentiment",
        )
        .expect("a DECLARE")
        .expect("planned");
        let CursorQuery::Residual(plan) = &sorted.query else {
            panic!("a residual cursor: {sorted:?}")
        };
        assert!(plan.declares() && plan.row_local.is_none());
        let residual = plan.residual_sql(&[Default::default()], 1);
        assert!(
            residual.starts_with(&format!(
                "DECLARE \"{}\" SCROLL CURSOR WITH HOLD FOR SELECT",
                sorted.upstream
            )),
            "{residual}"
        );
        // Beyond both planners: refused, with the way around it.
        let nested = declare(
            "DECLARE c CURSOR FOR SELECT aws_comprehend.detect_sentiment(\
             aws_sagemaker.invoke_endpoint('e', NULL, b), 'en') FROM t",
        )
        .expect("a DECLARE")
        .expect_err("refused");
        assert_eq!(nested.code, SqlState::FeatureNotSupported);
        assert!(
            nested.hint.is_some_and(|h| h.contains("CREATE TEMP TABLE")),
            "{:?}",
            nested.message
        );
    }

    #[test]
    fn a_declare_among_other_statements_is_refused_with_a_hint() {
        let error = plan::plan_query_message(
            "DECLARE c CURSOR FOR SELECT aws_comprehend.detect_sentiment(b, 'en') FROM t; \
             FETCH 5 FROM c",
        )
        .expect_err("refused");
        assert_eq!(error.code, SqlState::FeatureNotSupported);
        assert!(error.message.contains("statement of its own"), "{error:?}");
    }

    #[test]
    fn commands_are_rewritten_to_the_upstream_cursor() {
        assert_eq!(
            command("fetch forward 5 from C;", held),
            Some(CursorCommand::Fetch {
                name: "c".into(),
                sql: "fetch forward 5 from \"up.c\";".into()
            })
        );
        assert_eq!(
            command("FETCH ABSOLUTE -3 \"Mixed\"", held),
            Some(CursorCommand::Fetch {
                name: "Mixed".into(),
                sql: "FETCH ABSOLUTE -3 \"up.Mixed\"".into()
            })
        );
        assert_eq!(
            command("/* x */ MOVE 2 IN c", held),
            Some(CursorCommand::Move {
                name: "c".into(),
                sql: "/* x */ MOVE 2 IN \"up.c\"".into()
            })
        );
        assert_eq!(
            command("CLOSE c", held),
            Some(CursorCommand::Close {
                name: "c".into(),
                sql: "CLOSE \"up.c\"".into()
            })
        );
        // A quote inside a quoted name (found by fuzzing): folded once, doubled again when
        // the upstream name is quoted.
        assert_eq!(
            command("FETCH 1 FROM \"a\"\"b\"", |name| Some(format!("up.{name}"))),
            Some(CursorCommand::Fetch {
                name: "a\"b".into(),
                sql: "FETCH 1 FROM \"up.a\"\"b\"".into()
            })
        );
        // Consecutive quotes too (found by fuzzing: sqlparser prints them back as one).
        assert_eq!(
            command("FETCH 1 FROM \"a\"\"\"\"b\" -- next", |name| Some(format!(
                "up.{name}"
            ))),
            Some(CursorCommand::Fetch {
                name: "a\"\"b".into(),
                sql: "FETCH 1 FROM \"up.a\"\"\"\"b\" -- next".into()
            })
        );
        // A name right after a quoted word stays a word of its own (found by fuzzing).
        assert_eq!(
            command("FETCH \"x\"c", held),
            Some(CursorCommand::Fetch {
                name: "c".into(),
                sql: "FETCH \"x\" \"up.c\"".into()
            })
        );
        assert_eq!(command("close all", held), Some(CursorCommand::CloseAll));
        assert_eq!(
            command("DISCARD ALL", held),
            Some(CursorCommand::DiscardAll)
        );
        for (text, expected) in [
            ("DEALLOCATE s1", Some("s1")),
            ("deallocate prepare \"S 2\" ;", Some("S 2")),
            ("DEALLOCATE Mixed", Some("mixed")),
            ("DEALLOCATE", None),
            ("DEALLOCATE a b", None),
            ("DEALLOCATE 'a'", None),
        ] {
            let got = command(text, held);
            match (expected, &got) {
                (Some(name), Some(CursorCommand::Deallocate { name: n, at })) => {
                    assert_eq!(n, name, "{text}");
                    let renamed = rename(text, at.clone(), "pgenrich.s.x");
                    assert!(renamed.contains("\"pgenrich.s.x\""), "{renamed}");
                    assert!(!renamed.contains(&text[at.clone()]), "{renamed}");
                }
                (None, None) => {}
                _ => panic!("{text}: {got:?}"),
            }
        }
        for all in ["DEALLOCATE ALL", "deallocate prepare all;"] {
            assert_eq!(
                command(all, held),
                Some(CursorCommand::DeallocateAll),
                "{all}"
            );
        }
        assert!(may_be_command(b"  deallocate x"));
        assert!(may_end_statements(b"-- c\n deallocate x"));
        assert!(may_end_statements(b"DISCARD ALL"));
        assert!(!may_end_statements(b"FETCH c"));
        assert_eq!(
            command("DECLARE c CURSOR FOR SELECT 1", held),
            Some(CursorCommand::Redeclare { name: "c".into() })
        );
        // Another cursor, a quoted name of another case, several statements, other statements.
        for other in [
            "FETCH 5 FROM d",
            "FETCH 5 FROM \"C\"",
            "FETCH 1 FROM c; SELECT 1",
            "CLOSE \"all\"",
            "DECLARE d CURSOR FOR SELECT 1",
            "DISCARD PLANS",
            "SELECT * FROM c",
            "FETCH",
            "FETCH 'c",
        ] {
            assert_eq!(command(other, held), None, "{other}");
        }
    }

    #[test]
    fn the_relay_hands_over_only_cursor_statements() {
        for yes in [
            "FETCH 1 FROM c",
            "  move c",
            "-- note\nclose c",
            // A `--` comment ends at a carriage return too.
            "-- note\rclose c",
            "/* x */ FETCH c",
            "discard all",
            "DECLARE c CURSOR FOR SELECT 1",
            // Found by the `sql` fuzz target: a vertical tab before the word.
            "\n\n\u{b} \nmove c",
            "\u{b}FETCH c",
            "\u{a0}close c",
            "\u{3000}\u{2028}FETCH c",
        ] {
            assert!(may_be_command(yes.as_bytes()), "{yes:?}");
        }
        // The tokenizer skips the vertical tab, so the fuzz case is a MOVE of a held cursor.
        assert!(command("\n\n\u{b} \nmove c", held).is_some());
        assert!(command("-- note\rclose c", held).is_some());
        for no in ["SELECT 1", "-- FETCH", "UPDATE t SET a = 1", "", "FET"] {
            assert!(!may_be_command(no.as_bytes()), "{no}");
        }
    }
}
