//! What pgenrich does with a statement text, as the relay's ML hook does it, and the invariants
//! its results must hold. Both SQL targets end here.
//!
//! The invariants that matter most: nothing pgenrich sends upstream in place of an ML statement
//! (streaming base statements, residual base and residual statements, typing statements) may
//! itself call an ML function, and a statement the planners find ML calls in must be one the
//! hook recognises (or the relay would pass it to the database unplanned).

use pgenrich::sql::cursor::{self, CursorCommand, CursorQuery};
use pgenrich::sql::explain::{self, ExplainTarget};
use pgenrich::sql::plan::{self, Piece, StreamingPlan};
use pgenrich::sql::residual::{self, CarriedType, Described, ResidualPlan};
use pgenrich::sql::{guard, light};
use sqlparser::ast::Statement;

use pgenrich::sql::{self as hook, text, Verdict};

/// Runs every entry point on `sql` and checks what comes back.
pub fn check(sql: &str) {
    let mentions = hook::mentions_ml_schema(sql.as_bytes());
    let lower = sql.to_ascii_lowercase();
    assert_eq!(
        mentions,
        lower.contains("aws_comprehend")
            || lower.contains("aws_sagemaker")
            || lower.contains("aws_bedrock"),
        "the byte search disagrees with a plain search"
    );
    // The check for texts too long to tokenize never misses a call the tokenizer finds.
    let may_call = light::may_call_ml(sql.as_bytes());
    if guard::scan(sql).is_some_and(|scan| scan.calls_ml) {
        assert!(may_call, "a call the byte scan misses");
    }
    let verdict = hook::inspect(sql);
    match &verdict {
        Verdict::Relay => {}
        Verdict::Ml { function } => {
            assert!(
                mentions,
                "an ML call in text that does not mention an ML schema"
            );
            assert!(
                ["aws_comprehend.", "aws_sagemaker.", "aws_bedrock."]
                    .iter()
                    .any(|schema| function.starts_with(schema)),
                "{function}"
            );
        }
    }
    check_split(sql);
    let rewritten = text::rewrite_unparsable_forms(sql);
    if !mentions {
        assert_eq!(rewritten, sql, "text without ML names was rewritten");
    }
    let _ = explain::has_parameters(sql);
    check_cursor_command(sql);

    // What the hook plans: only text that mentions an ML schema reaches the planners. The
    // simple-protocol path (a Query message, one statement or several) and EXPLAIN; the Parse
    // path plans one statement the same way as a one-statement Query.
    if !mentions {
        return;
    }
    // DECLARE and EXPLAIN detection parse a text only when its first word may be theirs.
    if let Ok([statement]) = text::parse_folded(&rewritten).as_deref() {
        let word = match statement {
            Statement::Declare { .. } => "DECLARE",
            Statement::Explain { .. } => "EXPLAIN",
            _ => "",
        };
        assert!(
            word.is_empty() || text::first_word_may_be(sql.as_bytes(), &[word]),
            "a {word} the first-word check rules out: {sql:?}"
        );
    }
    if let Some(Ok(declare)) = cursor::declare(sql) {
        assert!(declare.upstream.len() < 64, "{}", declare.upstream);
        match &declare.query {
            CursorQuery::Streaming { sql, plan } => {
                check_streaming(plan);
                assert_no_ml("a cursor's DECLARE", sql);
            }
            CursorQuery::Residual(plan) => {
                assert!(plan.declares() && plan.row_local.is_none(), "{plan:?}");
                check_residual(plan);
            }
        }
    }
    if let Some(request) = explain::explain(sql) {
        let _ = explain::has_parameters(&request.statement);
        if let Some(target) = plan_explain(&request.statement) {
            match target {
                ExplainTarget::Streaming(p) => check_streaming(&p),
                ExplainTarget::Residual(p) => check_residual(&p),
            }
        }
    }
    if let Ok(pieces) = plan::plan_query_message(sql) {
        assert!(!pieces.is_empty());
        for piece in &pieces {
            match piece {
                Piece::Plain(text) => assert_eq!(
                    hook::inspect(text),
                    Verdict::Relay,
                    "a piece relayed as plain calls ML: {text:?}"
                ),
                Piece::Ml(p) => check_streaming(p),
                Piece::Residual(p) => check_residual(p),
            }
        }
        if pieces.iter().any(|p| !matches!(p, Piece::Plain(_))) {
            assert_ne!(verdict, Verdict::Relay, "planned ML pieces the hook relays");
        }
    }
}

/// FETCH, MOVE and CLOSE of a held cursor, and DEALLOCATE, are rewritten to the upstream name,
/// and the relay hands every such text over while cursors or ML statements are kept.
fn check_cursor_command(sql: &str) {
    let Some(command) = cursor::command(sql, |name| Some(format!("up.{name}"))) else {
        return;
    };
    assert!(
        cursor::may_be_command(sql.as_bytes()),
        "a cursor statement the relay would not hand over: {sql:?}"
    );
    if matches!(
        command,
        CursorCommand::DiscardAll | CursorCommand::Deallocate { .. } | CursorCommand::DeallocateAll
    ) {
        assert!(
            cursor::may_end_statements(sql.as_bytes()),
            "a DEALLOCATE or DISCARD the relay would not hand over: {sql:?}"
        );
    }
    match &command {
        CursorCommand::Fetch {
            name,
            sql: rewritten,
        }
        | CursorCommand::Move {
            name,
            sql: rewritten,
        }
        | CursorCommand::Close {
            name,
            sql: rewritten,
        } => {
            // Read back, the statement's last word is the held name, quoted.
            let tokens = text::significant_tokens(rewritten).expect("the rewrite tokenizes");
            let last = tokens
                .iter()
                .rev()
                .map(|(token, _)| token)
                .find(|token| **token != sqlparser::tokenizer::Token::SemiColon);
            assert!(
                matches!(last, Some(sqlparser::tokenizer::Token::Word(w))
                    if w.quote_style == Some('"') && w.value == format!("up.{name}")),
                "{sql:?} became {rewritten:?}"
            );
        }
        CursorCommand::Deallocate { name, at } => {
            // Renamed, the statement reads back as a DEALLOCATE of the upstream name.
            let renamed = cursor::rename(sql, at.clone(), &format!("up.{name}"));
            assert!(
                matches!(cursor::command(&renamed, |_| None),
                    Some(CursorCommand::Deallocate { name: up, .. }) if up == format!("up.{name}")),
                "{sql:?} became {renamed:?}"
            );
        }
        CursorCommand::CloseAll
        | CursorCommand::Redeclare { .. }
        | CursorCommand::DiscardAll
        | CursorCommand::DeallocateAll => {}
    }
}

/// The hook's planning of an EXPLAINed statement: streaming, else base + residual.
fn plan_explain(statement: &str) -> Option<ExplainTarget> {
    match plan::plan(statement) {
        Ok(p) => Some(ExplainTarget::Streaming(p)),
        Err(_) => residual::plan(statement).ok().map(ExplainTarget::Residual),
    }
}

/// Statements come back as their original text: non-blank slices of `sql`, in order, without
/// overlap.
fn check_split(sql: &str) {
    let pieces = text::split_statements(sql);
    let base = sql.as_ptr() as usize;
    let mut at = 0;
    for piece in &pieces {
        assert!(!piece.trim().is_empty(), "a blank statement");
        let start = (piece.as_ptr() as usize).wrapping_sub(base);
        assert!(
            start >= at && start + piece.len() <= sql.len(),
            "statement {piece:?} is not a slice of the text after the previous one"
        );
        at = start + piece.len();
    }
    if !sql.contains(';') {
        assert!(pieces.len() <= 1);
    }
}

/// Every text of a plan that goes upstream must be free of ML calls.
fn assert_no_ml(what: &str, sql: &str) {
    assert_eq!(
        hook::inspect(sql),
        Verdict::Relay,
        "{what} sent upstream calls an ML function: {sql}"
    );
}

pub fn check_streaming(p: &StreamingPlan) {
    assert_no_ml("a streaming base statement", &p.base_sql);
    for call in &p.calls {
        assert!(call.arg_count > 0, "a call without arguments: {p:?}");
        assert!(
            call.first_arg + call.arg_count <= p.arg_columns,
            "call arguments beyond the argument columns: {p:?}"
        );
    }
    for placeholder in &p.placeholders {
        assert!(
            placeholder.call < p.calls.len(),
            "a placeholder of no call: {p:?}"
        );
    }
    for (i, _) in p.placeholders.iter().enumerate() {
        let name = format!("{}{i}", plan::PLACEHOLDER_PREFIX);
        assert_eq!(p.placeholder(name.as_bytes()), p.placeholders.get(i));
    }
}

pub fn check_residual(p: &ResidualPlan) {
    assert!(!p.blocks.is_empty(), "a residual plan without blocks");
    let mut described = Vec::new();
    for block in &p.blocks {
        assert_no_ml("a residual base statement", &block.base_sql);
        for call in &block.calls {
            assert!(
                call.first_arg + call.arg_count <= block.arg_columns,
                "call arguments beyond the argument columns: {block:?}"
            );
        }
        for &record in &block.records {
            assert!(record < block.calls.len(), "a record of no call: {block:?}");
        }
        // Describe the base as the database would: every value column an int8, every star one
        // column; `value_columns` must read that shape back.
        let mut names: Vec<String> = (0..block.arg_columns).map(|i| format!("a{i}")).collect();
        names.extend((0..block.carried.len()).map(|i| format!("c{i}")));
        for k in 0..block.stars {
            names.push(format!("s{k}"));
            names.push(format!("pgenrich:end{k}"));
        }
        let (values, stars) = block
            .value_columns(&names)
            .unwrap_or_else(|| panic!("the planned base shape is not read back: {block:?}"));
        assert_eq!(values.len(), block.carried.len() + block.stars);
        assert_eq!(stars.len(), block.stars);
        let _ = block.parameter_count(values.len());
        described.push(Described {
            types: vec![
                CarriedType {
                    name: "int8".into(),
                    as_text: false,
                };
                values.len()
            ],
            stars,
        });
    }
    if let Some(typing) = &p.typing_sql {
        assert_no_ml("a typing statement", typing);
    }
    let residual = p.residual_sql(&described, 1);
    assert_no_ml("a residual statement", &residual);
    assert!(
        !residual.contains("pgenrich:base") && !residual.contains("pgenrich:star"),
        "a marker is left in the residual: {residual}"
    );
    let _ = p.writes();
}
