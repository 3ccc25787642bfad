//! AWS error texts name roles, endpoints by ARN and the account: clients get them redacted by
//! default, with the SQLSTATE and request id intact; `redact_aws_errors = false` shows them.

use crate::harness::*;

const DENIED: &str = "SELECT aws_sagemaker.invoke_endpoint('access-denied-1', NULL, 1)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_error_texts_are_redacted_for_clients_by_default() {
    let proxy = Proxy::start().await;
    let client = proxy.connect().await;
    let error = client.simple_query(DENIED).await.expect_err("denied");
    assert_eq!(sqlstate(&error), "42501", "{error}");
    let db = error.as_db_error().expect("an ErrorResponse");
    let message = db.message();
    assert!(
        message.contains("AccessDeniedException") && message.contains("access-denied-1"),
        "the code and the endpoint name stay: {message}"
    );
    assert!(
        !message.contains("123456789012") && !message.contains("arn:aws"),
        "no account id or ARN: {message}"
    );
    assert!(message.contains("arn:(redacted)"), "{message}");
    assert!(
        db.detail()
            .unwrap_or_default()
            .starts_with("AWS request id: mock-"),
        "{:?}",
        db.detail()
    );
    client
        .simple_query("SELECT 1")
        .await
        .expect("session usable");

    let proxy = Proxy::start_with(|c| c.inference.redact_aws_errors = false).await;
    let client = proxy.connect().await;
    let error = client.simple_query(DENIED).await.expect_err("denied");
    let message = error
        .as_db_error()
        .expect("an ErrorResponse")
        .message()
        .to_owned();
    assert!(
        message.contains("arn:aws:sagemaker:us-east-1:123456789012:endpoint/access-denied-1"),
        "{message}"
    );
}
