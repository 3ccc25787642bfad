//! `[[access]]` rules: which database roles may call which ML functions, endpoints and
//! languages. A refused call answers 42501 naming the function and the endpoint or language,
//! before any service call; plain SQL is never affected.

use pgenrich::access::{Rule, Rules};

use crate::harness::*;

fn rules() -> Rules {
    Rules::new(Some(vec![
        Rule {
            roles: vec![USER.into()],
            functions: vec![],
            endpoints: vec!["fraud*".into()],
            languages: vec![],
            models: vec![],
        },
        Rule {
            roles: vec![USER.into()],
            functions: vec![],
            endpoints: vec![],
            languages: vec!["en".into()],
            models: vec![],
        },
    ]))
    .expect("valid rules")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_call_only_what_the_rules_allow() {
    let proxy = Proxy::start_with(|c| c.access = rules()).await;
    let client = proxy.connect().await;
    let allowed = client
        .simple_query(
            "SELECT aws_sagemaker.invoke_endpoint('fraud-v2', NULL, 1), \
                    aws_comprehend.detect_sentiment('good', 'en')",
        )
        .await
        .expect("allowed");
    assert_eq!(text_rows(&allowed).len(), 1);

    proxy.mock.reset_stats();
    let denied = [
        (
            "SELECT aws_sagemaker.invoke_endpoint('churn', NULL, 1)",
            "permission denied for function aws_sagemaker.invoke_endpoint on endpoint \"churn\"",
        ),
        (
            "SELECT aws_comprehend.detect_sentiment('gut', 'de')",
            "permission denied for function aws_comprehend.detect_sentiment on language \"de\"",
        ),
        // Endpoint names from a column: refused before any call, the allowed ones included.
        (
            "SELECT aws_sagemaker.invoke_endpoint(e, NULL, 1) \
             FROM (VALUES ('fraud'), ('churn'), ('fraud')) AS v(e)",
            "on endpoint \"churn\"",
        ),
        // The residual (two-phase) mode checks the same way.
        (
            "SELECT count(*) FROM generate_series(1, 3) g \
             WHERE aws_sagemaker.invoke_endpoint('churn', NULL, g)::float8 > 0",
            "on endpoint \"churn\"",
        ),
    ];
    for (sql, expected) in denied {
        let error = client.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&error), "42501", "{sql}: {error}");
        let db = error.as_db_error().expect("an ErrorResponse");
        assert!(db.message().contains(expected), "{sql}: {}", db.message());
        assert!(
            db.hint().unwrap_or_default().contains(USER),
            "the hint names the role: {:?}",
            db.hint()
        );
    }
    let stats = proxy.mock.stats();
    assert_eq!(
        (stats.sagemaker_calls, stats.comprehend_calls),
        (0, 0),
        "no call for a refused statement"
    );
    // In a transaction block the refusal aborts it, as a native permission error does.
    client.batch_execute("BEGIN").await.expect("begin");
    let error = client
        .simple_query("SELECT aws_sagemaker.invoke_endpoint('churn', NULL, 1)")
        .await
        .expect_err("denied");
    assert_eq!(sqlstate(&error), "42501");
    let aborted = client.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(sqlstate(&aborted), "25P02");
    client.batch_execute("ROLLBACK").await.expect("rollback");

    // A role no rule names: no ML call at all, plain SQL as ever (prepared statements too).
    let other = connect(&proxy.conninfo("trust_user", "")).await;
    let error = other
        .query(
            "SELECT aws_comprehend.detect_sentiment($1::text, 'en')",
            &[&"good"],
        )
        .await
        .expect_err("denied");
    assert_eq!(sqlstate(&error), "42501", "{error}");
    let row = other
        .query_one("SELECT $1::int + 1", &[&1i32])
        .await
        .expect("plain SQL");
    assert_eq!(row.get::<_, i32>(0), 2);
}
