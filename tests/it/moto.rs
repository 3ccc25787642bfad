//! Compatibility with a third-party emulator of the AWS APIs: moto's server mode (PyPI
//! `moto[server]`). It implements InvokeEndpoint (results configured through its moto-api),
//! DetectSentiment (a fixed answer) and Bedrock's InvokeModel (an empty JSON object for every
//! model); pgenrich's SDK clients call all three through it.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{free_port, sqlstate, Proxy};

async fn post_json(port: u16, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect moto");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_server_answers_invoke_endpoint_detect_sentiment_and_invoke_model() {
    let installed = std::process::Command::new("python3")
        .args(["-c", "import moto.server"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "moto's server mode is needed for this test: python3 -m pip install 'moto[server]' \
         (scripts/test.sh installs it)"
    );
    let port = free_port();
    let _moto = tokio::process::Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start moto");
    let mut up = false;
    for _ in 0..150 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "moto server did not start on port {port}");
    let reply = post_json(
        port,
        "/moto-api/static/sagemaker/endpoint-results",
        r#"{"results": [{"Body": "0.875\n", "ContentType": "text/csv"}]}"#,
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 20") || reply.starts_with("HTTP/1.0 20"),
        "{reply}"
    );

    let url = format!("http://127.0.0.1:{port}");
    let proxy = Proxy::start_with_backends(&url).await;
    let client = proxy.connect().await;
    let out = client
        .simple_query(
            "SELECT aws_sagemaker.invoke_endpoint('fraud-detector', NULL, 42.5, 'merchant, inc')",
        )
        .await
        .expect("invoke through moto");
    assert_eq!(first_value(&out).as_deref(), Some("0.875"));
    let out = client
        .simple_query("SELECT aws_comprehend.detect_sentiment('The service was fine', 'en')")
        .await
        .expect("detect through moto");
    // moto's canned answer: NEUTRAL with a Neutral score of 0.9916020035743713 (as real: 0.991602).
    assert_eq!(first_value(&out).as_deref(), Some("(NEUTRAL,0.991602)"));
    // moto's InvokeModel answers every model with an empty JSON object.
    let out = client
        .simple_query(
            "SELECT aws_bedrock.invoke_model('anthropic.claude-v2', 'application/json', \
             'application/json', '{\"prompt\":\"hi\"}')",
        )
        .await
        .expect("invoke_model through moto");
    assert_eq!(first_value(&out).as_deref(), Some("{}"));
    // … so it has no embedding to read: the model's error, naming the key.
    let error = client
        .simple_query(
            "SELECT aws_bedrock.invoke_model_get_embeddings('amazon.titan-embed-text-v2:0', \
             'application/json', 'embedding', '{\"inputText\":\"hi\"}')",
        )
        .await
        .expect_err("no embedding in moto's answer");
    assert_eq!(sqlstate(&error), "38000", "{error}");
}
