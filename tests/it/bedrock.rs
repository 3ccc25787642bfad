//! The Bedrock functions (`aws_bedrock.invoke_model`, `aws_bedrock.invoke_model_get_embeddings`)
//! through the real `aws-sdk-bedrockruntime` client against mock-aws's InvokeModel: results,
//! column types, one call per distinct input, both execution modes, errors and access rules.

use mock_aws::bedrock::{describe, embedding};
use tokio_postgres::types::Type;

use crate::harness::*;

const TITAN: &str = "amazon.titan-embed-text-v2:0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_model_returns_each_rows_response_body_as_text() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    let sql = "SELECT g, aws_bedrock.invoke_model('anthropic.claude-v2', 'application/json', \
               'application/json', '{\"prompt\":\"' || (g % 3) || '\"}') AS answer \
               FROM generate_series(1, 9) g ORDER BY g";
    let rows = text_rows(&client.simple_query(sql).await.expect("runs"));
    assert_eq!(rows.len(), 9);
    for row in &rows {
        let g: usize = row[0].as_deref().expect("g").parse().expect("int");
        let body = format!("{{\"prompt\":\"{}\"}}", g % 3);
        assert_eq!(
            row[1].as_deref(),
            Some(
                describe(
                    "anthropic.claude-v2",
                    "application/json",
                    "application/json",
                    body.len()
                )
                .as_str()
            )
        );
    }
    let stats = proxy.mock.stats();
    assert_eq!(stats.bedrock_calls, 3, "one call per distinct input");
    assert!(stats
        .bedrock_models
        .iter()
        .all(|m| m == "anthropic.claude-v2"));

    // The column is `text`, named after the function unless aliased; NULL input gives NULL.
    let statement = client
        .prepare("SELECT aws_bedrock.invoke_model('echo', 'text/plain', 'text/plain', $1)")
        .await
        .expect("prepare");
    assert_eq!(statement.columns()[0].name(), "invoke_model");
    assert_eq!(statement.columns()[0].type_(), &Type::TEXT);
    assert_eq!(statement.params(), &[Type::TEXT]);
    let echoed: Option<String> = client
        .query_one(&statement, &[&"héllo, \"world\"\n"])
        .await
        .expect("echo")
        .get(0);
    assert_eq!(echoed.as_deref(), Some("héllo, \"world\"\n"));
    let null: Option<String> = client
        .query_one(&statement, &[&None::<String>])
        .await
        .expect("NULL")
        .get(0);
    assert_eq!(null, None);

    // Filtering and sorting on the result: the residual form.
    let rows = text_rows(
        &client
            .simple_query(
                "SELECT g FROM generate_series(1, 12) g \
                 WHERE aws_bedrock.invoke_model('echo', 'text/plain', 'text/plain', g::text) \
                       LIKE '1%' \
                 ORDER BY aws_bedrock.invoke_model('echo', 'text/plain', 'text/plain', g::text) DESC",
            )
            .await
            .expect("residual"),
    );
    let got: Vec<&str> = rows.iter().map(|r| r[0].as_deref().expect("g")).collect();
    assert_eq!(got, ["12", "11", "10", "1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_float8_arrays_in_both_protocols_and_modes() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    let texts = ["good day", "héllo wörld", "", "a b c"];
    let want: Vec<Vec<f64>> = texts.iter().map(|t| embedding(t, 4)).collect();
    let statement = client
        .prepare(
            "SELECT t, aws_bedrock.invoke_model_get_embeddings($1, 'application/json', \
                    'embedding', json_build_object('inputText', t)::text) AS e \
             FROM unnest($2::text[]) WITH ORDINALITY AS x(t, n) ORDER BY n",
        )
        .await
        .expect("prepare");
    assert_eq!(statement.columns()[1].type_(), &Type::FLOAT8_ARRAY);
    let rows = client
        .query(&statement, &[&TITAN, &texts.to_vec()])
        .await
        .expect("binary results");
    let got: Vec<Vec<f64>> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(got, want);

    // Text format, as PostgreSQL prints float8[].
    let rows = text_rows(
        &client
            .simple_query(&format!(
                "SELECT aws_bedrock.invoke_model_get_embeddings('{TITAN}', 'application/json', \
                        'embedding', '{{\"inputText\":\"good day\",\"dimensions\":3}}')"
            ))
            .await
            .expect("text"),
    );
    let three = embedding("good day", 3);
    let literal = format!(
        "{{{}}}",
        three
            .iter()
            .map(f64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(rows[0][0].as_deref(), Some(literal.as_str()));

    // The array in SQL around it (residual form): indexing, array functions, ordering.
    let rows = text_rows(
        &client
            .simple_query(&format!(
                "SELECT t, array_length(e, 1), e[1] FROM (\
                   SELECT t, aws_bedrock.invoke_model_get_embeddings('{TITAN}', \
                          'application/json', 'embedding', json_build_object('inputText', t)::text) AS e \
                   FROM unnest(ARRAY['good day', 'a b c', 'xyz']) AS t) s \
                 WHERE e[2] >= 0 ORDER BY e[1] DESC"
            ))
            .await
            .expect("residual"),
    );
    let mut expected: Vec<(&str, f64)> = ["good day", "a b c", "xyz"]
        .iter()
        .map(|t| (*t, embedding(t, 4)[0]))
        .collect();
    expected.sort_by(|a, b| b.1.total_cmp(&a.1));
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            let v = |i: usize| r[i].clone().expect("value");
            (v(0), v(1), v(2))
        })
        .collect();
    let want: Vec<(String, String, String)> = expected
        .iter()
        .map(|(t, first)| (t.to_string(), "4".to_string(), first.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_failures_get_sqlstates_and_the_session_goes_on() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    let call = |model: &str, key: &str| {
        format!(
            "SELECT aws_bedrock.invoke_model_get_embeddings('{model}', 'application/json', \
             '{key}', '{{\"inputText\":\"x\"}}')"
        )
    };
    for (sql, code) in [
        (call("model-error-1", "embedding"), "38000"),
        (call("missing-model", "embedding"), "38000"),
        // The key is not in the response: the model's answer does not fit.
        (call(TITAN, "vector"), "38000"),
        (
            "SELECT aws_bedrock.invoke_model(NULL, 'application/json', '*/*', 'x')".into(),
            "22023",
        ),
        (
            "SELECT aws_bedrock.invoke_model('m', 'application/json', '*/*')".into(),
            "42883",
        ),
        (
            "SELECT (aws_bedrock.invoke_model('m', 'a', 'b', 'c')).x".into(),
            "42809",
        ),
        (
            "SELECT * FROM aws_bedrock.invoke_model('m', 'a', 'b', 'c')".into(),
            "0A000",
        ),
    ] {
        let error = client.simple_query(&sql).await.expect_err(&sql);
        assert_eq!(sqlstate(&error), code, "{sql}: {error}");
    }
    // Access denied by the service: 42501, the ARN and account redacted for the client.
    let error = client
        .simple_query("SELECT aws_bedrock.invoke_model('access-denied', 'a', 'b', 'c')")
        .await
        .expect_err("denied");
    assert_eq!(sqlstate(&error), "42501", "{error}");
    let text = format!("{:?}", error.as_db_error());
    assert!(!text.contains("123456789012"), "{text}");
    // Throttling beyond the SDK's retries.
    proxy.mock.throttle_next(10);
    let error = client
        .simple_query("SELECT aws_bedrock.invoke_model('throttled', 'a', 'b', 'c')")
        .await
        .expect_err("throttled");
    assert_eq!(sqlstate(&error), "53000", "{error}");
    proxy.mock.throttle_next(0);
    let rows = client
        .simple_query("SELECT aws_bedrock.invoke_model('echo', 'a', 'b', 'still here')")
        .await
        .expect("usable");
    assert_eq!(text_rows(&rows)[0][0].as_deref(), Some("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_name_bedrock_models() {
    let rules: Vec<pgenrich::access::Rule> = toml::from_str::<toml::Table>(
        "[[access]]\nroles = [\"*\"]\nmodels = [\"amazon.titan-*\"]\n",
    )
    .expect("toml")["access"]
        .clone()
        .try_into()
        .expect("rules");
    let proxy = Proxy::start_with(|c| {
        c.access = pgenrich::access::Rules::new(Some(rules)).expect("valid");
    })
    .await;
    let client = proxy.connect().await;
    client
        .simple_query(&format!(
            "SELECT aws_bedrock.invoke_model_get_embeddings('{TITAN}', 'application/json', \
             'embedding', '{{\"inputText\":\"ok\"}}')"
        ))
        .await
        .expect("allowed");
    let error = client
        .simple_query("SELECT aws_bedrock.invoke_model('anthropic.claude-v2', 'a', 'b', 'c')")
        .await
        .expect_err("denied");
    assert_eq!(sqlstate(&error), "42501", "{error}");
    let message = error
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("aws_bedrock.invoke_model"), "{message}");
    assert_eq!(
        proxy.mock.stats().bedrock_calls,
        1,
        "nothing sent for the denied call"
    );
}
