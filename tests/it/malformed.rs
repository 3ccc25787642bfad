//! Malformed client bytes end that session with a clear error and never disturb other sessions.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{cstr, error_code, message, Proxy, RawClient};

/// A healthy session that must keep working while others misbehave.
async fn assert_other_session_works(proxy: &Proxy, client: &tokio_postgres::Client) {
    let row = client
        .query_one("SELECT 40 + 2", &[])
        .await
        .expect("bystander works");
    assert_eq!(row.get::<_, i32>(0), 42);
    let fresh = proxy.connect().await;
    fresh
        .simple_query("SELECT 1")
        .await
        .expect("new sessions work");
}

/// Reads until the server closes; returns the SQLSTATEs of the errors seen.
async fn errors_until_closed(raw: &mut RawClient) -> Vec<String> {
    let mut codes = Vec::new();
    while let Some((kind, body)) = raw.recv().await {
        if kind == b'E' {
            codes.push(error_code(&body));
        }
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lengths_unknown_types_and_truncated_startups_close_only_that_session() {
    let proxy = Proxy::start().await;
    let bystander = proxy.connect().await;

    // A frame whose length is smaller than the length field itself.
    let mut raw = RawClient::startup(proxy.addr).await;
    raw.stream_write(&[b'Q', 0, 0, 0, 2]).await;
    assert_eq!(errors_until_closed(&mut raw).await, ["08P01"]);
    assert_other_session_works(&proxy, &bystander).await;

    // A negative length.
    let mut raw = RawClient::startup(proxy.addr).await;
    raw.stream_write(&[b'B', 0xff, 0xff, 0xff, 0xf0]).await;
    assert_eq!(errors_until_closed(&mut raw).await, ["08P01"]);

    // An unknown message type: relayed, and PostgreSQL reports the violation.
    let mut raw = RawClient::startup(proxy.addr).await;
    raw.send(b'y', b"junk").await;
    assert_eq!(errors_until_closed(&mut raw).await, ["08P01"]);
    assert_other_session_works(&proxy, &bystander).await;

    // A truncated startup packet, then silence and hang-up.
    let mut raw = RawClient::connect(proxy.addr).await;
    raw.stream_write(&[0, 0, 0, 40, 0, 3]).await;
    drop(raw);
    // A startup packet with an impossible length.
    let mut raw = RawClient::connect(proxy.addr).await;
    raw.stream_write(&[0, 0, 0, 2, 0, 3, 0, 0]).await;
    assert_eq!(errors_until_closed(&mut raw).await, ["08P01"]);
    // A startup packet that is not key/value pairs.
    let mut raw = RawClient::connect(proxy.addr).await;
    raw.stream_write(&[0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r'])
        .await;
    assert_eq!(errors_until_closed(&mut raw).await, ["08P01"]);
    // Protocol 2.0.
    let mut raw = RawClient::connect(proxy.addr).await;
    raw.stream_write(&[0, 0, 0, 8, 0, 2, 0, 0]).await;
    assert_eq!(errors_until_closed(&mut raw).await, ["0A000"]);
    // Random garbage instead of a startup packet.
    let mut raw = RawClient::connect(proxy.addr).await;
    raw.stream_write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(errors_until_closed(&mut raw).await, ["08P01"]);

    assert_other_session_works(&proxy, &bystander).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gss_requests_are_declined_without_a_certificate() {
    let proxy = Proxy::start().await;
    for code in [80_877_103u32, 80_877_104] {
        let mut raw = RawClient::connect(proxy.addr).await;
        let mut packet = 8u32.to_be_bytes().to_vec();
        packet.extend(code.to_be_bytes());
        raw.stream_write(&packet).await;
        let mut answer = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), raw.stream.read_exact(&mut answer))
            .await
            .expect("answer")
            .expect("read");
        assert_eq!(&answer, b"N");
        // The session then proceeds in plain text.
        raw.send_startup(&[
            ("user", "trust_user"),
            ("database", crate::harness::DATABASE),
        ])
        .await;
        let reply = raw.recv_until_ready().await;
        assert_eq!(reply.last().map(|m| m.0), Some(b'Z'));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_statement_text_gets_54000_and_the_session_goes_on() {
    let proxy = Proxy::start_with(|c| c.max_query_bytes = 4096).await;
    let mut raw = RawClient::startup(proxy.addr).await;
    let long = format!("SELECT '{}'", "x".repeat(10_000));
    raw.send(b'Q', &cstr(&long)).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(crate::harness::kinds(&reply), "EZ");
    assert_eq!(error_code(&reply[0].1), "54000");
    // Within the limit: relayed.
    raw.send(b'Q', &cstr("SELECT 'short'")).await;
    let reply = raw.recv_until_ready().await;
    assert_eq!(crate::harness::kinds(&reply), "TDCZ");
    // Sent in small pieces, the long text is still discarded whole.
    let bytes = message(b'Q', &cstr(&long));
    for chunk in bytes.chunks(1000) {
        raw.stream.write_all(chunk).await.expect("write");
        raw.stream.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reply = raw.recv_until_ready().await;
    assert_eq!(error_code(&reply[0].1), "54000");
    raw.send(b'Q', &cstr("SELECT 2")).await;
    assert_eq!(crate::harness::kinds(&raw.recv_until_ready().await), "TDCZ");
}
