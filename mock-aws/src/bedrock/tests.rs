use super::*;
use crate::MockAws;
use std::io::{Read, Write};
use std::net::SocketAddr;

#[test]
fn labels_are_percent_decoded() {
    assert_eq!(
        decode_label("amazon.titan-embed-text-v2%3A0").as_deref(),
        Some("amazon.titan-embed-text-v2:0")
    );
    assert_eq!(
        decode_label("arn%3aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Fecho").as_deref(),
        Some("arn:aws:bedrock:us-east-1::foundation-model/echo")
    );
    assert_eq!(decode_label("plain-id").as_deref(), Some("plain-id"));
    assert_eq!(decode_label("caf%C3%A9").as_deref(), Some("café"));
    for bad in ["trailing%", "short%3", "%zz", "%+1", "%FF"] {
        assert_eq!(decode_label(bad), None, "{bad}");
    }
}

#[test]
fn embedding_follows_the_formula_over_code_points() {
    // "héllo wörld": 11 code points summing to 1383 ('é' 233, 'ö' 246; its 13 UTF-8 bytes
    // would give other values), so L = 11 and S mod 1000 = 383.
    let text = "héllo wörld";
    assert_eq!(text.chars().map(u64::from).sum::<u64>(), 1383);
    assert_eq!(embedding(text, 4), [0.011, 0.394, 0.777, 0.16]);
    assert_eq!(embedding("", 3), [0.0, 0.0, 0.0]);
    // Far indices agree with exact arithmetic.
    let exact = |i: u64| ((11 + i * 1383) % 1000) as f64 / 1000.0;
    let long = embedding(text, MAX_DIMENSIONS);
    assert!((0..MAX_DIMENSIONS as u64).all(|i| long[i as usize] == exact(i)));

    let body = br#"{"inputText":"h\u00e9llo  w\u00f6rld","dimensions":2}"#;
    // Two spaces: 12 code points, sum 1415, still two words.
    assert_eq!(
        embed("application/json; charset=utf-8", body).as_deref(),
        Ok(r#"{"embedding":[0.012,0.427],"inputTextTokenCount":2}"#)
    );
    assert_eq!(
        embed("application/json", br#"{"inputText":"ab"}"#).as_deref(),
        Ok(r#"{"embedding":[0.002,0.197,0.392,0.587],"inputTextTokenCount":1}"#)
    );
}

#[test]
fn the_embedding_model_refuses_bad_input() {
    let refused =
        |content_type: &str, body: &str| embed(content_type, body.as_bytes()).expect_err("refused");
    assert!(refused("text/plain", r#"{"inputText":"a"}"#).contains("content type"));
    assert!(refused("", r#"{"inputText":"a"}"#).contains("content type"));
    for body in [
        "not json",
        "[1]",
        "{}",
        r#"{"inputText":3}"#,
        r#"{"inputText":"a","dimensions":0}"#,
        r#"{"inputText":"a","dimensions":1025}"#,
        r#"{"inputText":"a","dimensions":2.5}"#,
        r#"{"inputText":"a","dimensions":"4"}"#,
    ] {
        assert!(
            refused("application/json", body).starts_with("Malformed input request: "),
            "{body}"
        );
    }
    assert!(embed(
        "application/json",
        br#"{"inputText":"a","dimensions":1024}"#
    )
    .is_ok());
    assert!(embed(
        "application/json",
        br#"{"inputText":"a","dimensions":null}"#
    )
    .is_ok());
}

#[test]
fn echo_and_default_models() {
    let output = |content_type: &str, body: &[u8]| Answer::Output {
        content_type: content_type.to_owned(),
        body: Bytes::copy_from_slice(body),
    };
    assert_eq!(
        answer("echo-v1", "text/plain", "text/csv", b"a,b\n"),
        Ok(output("text/csv", b"a,b\n"))
    );
    assert_eq!(
        answer("echo", "application/json", "", b"{}"),
        Ok(output("application/json", b"{}"))
    );
    assert_eq!(
        answer("echo", "application/json", "*/*", b"\xff"),
        Ok(output("application/json", b"\xff"))
    );
    // A fault prefix wins over `embed`; `echo` wins over `embed` too.
    assert_eq!(
        answer("echo-embed", "text/plain", "", b"x"),
        Ok(output("application/json", b"x"))
    );
    assert_eq!(
        answer(
            "anthropic.claude-3-haiku-20240307-v1:0",
            "application/json",
            "",
            "{\"prompt\":\"é\"}".as_bytes()
        ),
        Ok(output(
            "application/json",
            br#"{"model":"anthropic.claude-3-haiku-20240307-v1:0","content_type":"application/json","accept":"","input_bytes":15}"#
        ))
    );
    assert_eq!(
        describe("m\"1", "a\\b", "x\ny", 0),
        r#"{"model":"m\"1","content_type":"a\\b","accept":"x\ny","input_bytes":0}"#
    );
}

#[test]
fn fault_ids_answer_the_model_errors() {
    let cases = [
        ("model-error-1", 424, "ModelErrorException"),
        ("missing.model", 404, "ResourceNotFoundException"),
        ("access-denied", 403, "AccessDeniedException"),
        ("validation-embed", 400, "ValidationException"),
        ("timeout", 408, "ModelTimeoutException"),
        ("not-ready:0", 429, "ModelNotReadyException"),
    ];
    for (model, status, code) in cases {
        match answer(model, "application/json", "", b"{}") {
            Ok(Answer::Fault {
                status: got,
                code: got_code,
                ..
            }) => assert_eq!((got.as_u16(), got_code), (status, code), "{model}"),
            other => panic!("{model}: {other:?}"),
        }
    }
    let Some((_, _, message)) = model_fault("access-denied-x:1") else {
        panic!("access-denied is a fault id");
    };
    assert_eq!(
        message,
        "User: arn:aws:sts::123456789012:assumed-role/app/i-0abc is not authorized to perform: \
         bedrock:InvokeModel on resource: \
         arn:aws:bedrock:us-east-1::foundation-model/access-denied-x:1"
    );
    assert_eq!(model_fault("a-missing-model"), None);
}

/// One POST over a fresh connection, signed unless `signed` is false; the status, the
/// lower-cased response head and the body.
fn post(addr: SocketAddr, path: &str, headers: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: mock\r\n{headers}content-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(body).expect("write body");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&answer[..split]).to_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, head, answer[split + 4..].to_vec())
}

const SIGNED: &str = "authorization: AWS4-HMAC-SHA256 Credential=test\r\n";

async fn invoke(mock: &MockAws, model: &str, headers: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let (addr, path, headers, body) = (
        mock.addr(),
        format!("/model/{model}/invoke"),
        format!("{SIGNED}{headers}"),
        body.to_vec(),
    );
    tokio::task::spawn_blocking(move || post(addr, &path, &headers, &body))
        .await
        .expect("request task")
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_model_over_http() {
    let mock = MockAws::start().await.expect("mock starts");
    let json = "content-type: application/json\r\n";

    let (status, head, body) = invoke(
        &mock,
        "amazon.titan-embed-text-v2%3A0",
        &format!("{json}accept: application/json\r\n"),
        r#"{"inputText":"ab","dimensions":2}"#.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(
        body,
        br#"{"embedding":[0.002,0.197],"inputTextTokenCount":1}"#
    );

    let (status, head, body) = invoke(
        &mock,
        "echo",
        "content-type: text/plain\r\naccept: text/csv\r\n",
        b"1,2\n",
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, &b"1,2\n"[..]));
    assert!(head.contains("content-type: text/csv"), "{head}");

    let (status, _, body) = invoke(&mock, "meta.llama3%3A0", json, b"{}").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        br#"{"model":"meta.llama3:0","content_type":"application/json","accept":"","input_bytes":2}"#
    );

    let (status, head, body) = invoke(&mock, "model-error%3A1", json, b"{}").await;
    assert_eq!(status, 424);
    assert!(
        head.contains("x-amzn-errortype: modelerrorexception"),
        "{head}"
    );
    let error: Value = serde_json::from_slice(&body).expect("JSON error");
    assert_eq!(
        error["message"],
        "The model returned an error: input rejected"
    );

    // Refused input and knobs do not reach a model.
    let (status, head, _) = invoke(&mock, "titan-embed", json, b"{}").await;
    assert_eq!(status, 400);
    assert!(
        head.contains("x-amzn-errortype: validationexception"),
        "{head}"
    );
    mock.throttle_next(1);
    let (status, head, body) = invoke(&mock, "echo", json, b"{}").await;
    assert_eq!(status, 429);
    assert!(
        head.contains("x-amzn-errortype: throttlingexception"),
        "{head}"
    );
    let error: Value = serde_json::from_slice(&body).expect("JSON error");
    assert_eq!(
        error["message"],
        "Too many requests, please wait before trying again."
    );
    mock.fail_next(1);
    let (status, head, _) = invoke(&mock, "echo", json, b"{}").await;
    assert_eq!(status, 500);
    assert!(
        head.contains("x-amzn-errortype: internalserverexception"),
        "{head}"
    );
    let addr = mock.addr();
    let unsigned = tokio::task::spawn_blocking(move || {
        post(
            addr,
            "/model/echo/invoke",
            "content-type: text/plain\r\n",
            b"x",
        )
    })
    .await
    .expect("request task");
    assert_eq!(unsigned.0, 403);
    for path in [
        "/model/echo/invoke-with-response-stream",
        "/model/echo/invoke-with-response-stream/invoke",
    ] {
        let status = tokio::task::spawn_blocking(move || post(addr, path, SIGNED, b"{}"))
            .await
            .expect("request task")
            .0;
        assert_eq!(status, 404, "{path}: other operations are not served");
    }

    // The continuous faults answer in Bedrock's terms too.
    mock.set_faults(crate::Faults {
        error_rate: 1.0,
        ..crate::Faults::default()
    })
    .expect("valid faults");
    let mut codes = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, head, _) = invoke(&mock, "echo", json, b"{}").await;
        let code = head
            .lines()
            .find_map(|line| line.strip_prefix("x-amzn-errortype: "))
            .map(str::to_owned);
        codes.insert((status, code.unwrap_or_default()));
    }
    assert_eq!(
        codes.into_iter().collect::<Vec<_>>(),
        [
            (500, "internalserverexception".to_owned()),
            (503, "serviceunavailableexception".to_owned())
        ]
    );
    mock.set_faults(crate::Faults::default())
        .expect("valid faults");

    let stats = mock.stats();
    assert_eq!(stats.bedrock_calls, 4);
    assert_eq!(
        stats.bedrock_models,
        [
            "amazon.titan-embed-text-v2:0",
            "echo",
            "meta.llama3:0",
            "model-error:1"
        ]
    );
    assert_eq!((stats.throttled, stats.failed, stats.unsigned), (1, 21, 1));
    assert_eq!((stats.sagemaker_calls, stats.comprehend_calls), (0, 0));
}
