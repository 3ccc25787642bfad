//! TLS on both legs: pgenrich terminates the client's TLS with its own certificate and opens a
//! verified TLS connection to PostgreSQL.

use std::sync::Arc;

use pgenrich::config::UpstreamTlsMode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::harness::{postgres, Proxy, DATABASE, PASSWORD, USER};

fn client_tls(ca: &std::path::Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca").flatten() {
        roots.add(cert).expect("add root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_legs_with_verify_full() {
    let pg = postgres();
    let proxy = Proxy::start_with(|c| {
        c.tls_cert_file = Some(pg.tls.server_cert.clone());
        c.tls_key_file = Some(pg.tls.server_key.clone());
        c.upstream_tls_mode = UpstreamTlsMode::VerifyFull;
        c.upstream_tls_ca_file = Some(pg.tls.ca_cert.clone());
    })
    .await;
    // SCRAM channel binding cannot cross a TLS-terminating proxy (see README), so disable it.
    let conninfo = format!(
        "host=localhost port={} user={USER} password={PASSWORD} dbname={DATABASE} \
         sslmode=require channel_binding=disable",
        proxy.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, client_tls(&pg.tls.ca_cert))
        .await
        .expect("TLS connect through pgenrich");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query");
    assert!(row.get::<_, bool>(0), "the upstream leg is encrypted");
    assert!(row.get::<_, String>(1).starts_with("TLS"));
    let rows = client
        .query(
            "SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
            &[],
        )
        .await
        .expect("larger result over TLS");
    assert_eq!(rows.len(), 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_verification_failures_are_reported() {
    let pg = postgres();
    // verify-full against a name the certificate does not carry fails; verify-ca accepts it.
    for (mode, ok) in [
        (UpstreamTlsMode::VerifyFull, false),
        (UpstreamTlsMode::VerifyCa, true),
    ] {
        let proxy = Proxy::start_with(|c| {
            c.upstream_tls_mode = mode;
            c.upstream_tls_ca_file = Some(pg.tls.ca_cert.clone());
            c.upstream_tls_server_name = Some("db.example.com".into());
        })
        .await;
        let result =
            tokio_postgres::connect(&proxy.conninfo(USER, PASSWORD), tokio_postgres::NoTls).await;
        match (ok, result) {
            (true, Ok((client, connection))) => {
                tokio::spawn(connection);
                client
                    .simple_query("SELECT 1")
                    .await
                    .expect("verify-ca works");
            }
            (false, Err(error)) => {
                assert_eq!(crate::harness::sqlstate(&error), "08006", "{error}");
            }
            (ok, result) => panic!("{mode:?}: expected ok={ok}, got {:?}", result.err()),
        }
    }
}

/// A TLS client configuration trusting `ca`, offering `alpn` (PostgreSQL 17 clients offer
/// `postgresql`).
fn client_tls_with_alpn(
    ca: &std::path::Path,
    alpn: &[&[u8]],
) -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca").flatten() {
        roots.add(cert).expect("add root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_from_postgresql_17_clients() {
    let pg = postgres();
    let proxy = Proxy::start_with(|c| {
        c.tls_cert_file = Some(pg.tls.server_cert.clone());
        c.tls_key_file = Some(pg.tls.server_key.clone());
    })
    .await;
    let conninfo = format!(
        "host=localhost port={} user={USER} password={PASSWORD} dbname={DATABASE} \
         sslmode=require sslnegotiation=direct channel_binding=disable",
        proxy.addr.port()
    );
    // With the ALPN protocol `postgresql`, as libpq 17 sends it: a working session, ML too.
    let (client, connection) = tokio_postgres::connect(
        &conninfo,
        client_tls_with_alpn(&pg.tls.ca_cert, &[b"postgresql"]),
    )
    .await
    .expect("direct TLS through pgenrich");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT aws_comprehend.detect_sentiment('I love it', 'en')::text",
            &[],
        )
        .await
        .expect("ML over direct TLS");
    assert!(row.get::<_, String>(0).starts_with("(POSITIVE,"));

    // Without ALPN: refused, as PostgreSQL 17 refuses it, with a protocol violation.
    let error = tokio_postgres::connect(&conninfo, client_tls_with_alpn(&pg.tls.ca_cert, &[]))
        .await
        .err()
        .expect("refused without ALPN");
    assert_eq!(error.code().map(|c| c.code()), Some("08P01"), "{error:?}");
    // The usual SSLRequest negotiation still works, with or without ALPN.
    let conninfo = conninfo.replace("sslnegotiation=direct", "sslnegotiation=postgres");
    for alpn in [&[][..], &[&b"postgresql"[..]][..]] {
        let (client, connection) =
            tokio_postgres::connect(&conninfo, client_tls_with_alpn(&pg.tls.ca_cert, alpn))
                .await
                .expect("SSLRequest TLS");
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await.expect("query");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_without_a_certificate_is_refused_cleanly() {
    let pg = postgres();
    let proxy = Proxy::start().await;
    let conninfo = format!(
        "host=localhost port={} user={USER} password={PASSWORD} dbname={DATABASE} \
         sslmode=require sslnegotiation=direct channel_binding=disable",
        proxy.addr.port()
    );
    let started = std::time::Instant::now();
    let error = tokio_postgres::connect(
        &conninfo,
        client_tls_with_alpn(&pg.tls.ca_cert, &[b"postgresql"]),
    )
    .await
    .err()
    .expect("refused");
    // A TLS alert, at once: not a plaintext error the client would take for TLS, not a hang.
    let text = format!("{error:?}");
    assert!(text.to_lowercase().contains("handshake"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // Plain sessions go on.
    let client = proxy.connect().await;
    client
        .simple_query("SELECT 1")
        .await
        .expect("plain session");
}
