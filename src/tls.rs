//! TLS configuration for both legs, on rustls with the aws-lc-rs provider.
//!
//! Client side: a certificate and key from PEM files. Upstream side: libpq's `sslmode` semantics —
//! `prefer` and `require` encrypt without checking the certificate, `verify-ca` checks the chain
//! but not the name, `verify-full` checks both (what Aurora with the RDS CA bundle wants).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};

use crate::config::{Config, UpstreamTlsMode};
use crate::error::ConfigError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The ALPN protocol of PostgreSQL connections (PostgreSQL 17), offered to every TLS client and
/// required of direct TLS ones.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The acceptor for clients that send SSLRequest or open with TLS directly, if a certificate is
/// configured.
pub fn server_config(config: &Config) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
    let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
        return Ok(None);
    };
    let chain = read_certs("tls_cert_file", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ConfigError::Invalid {
        key: "tls_key_file",
        reason: format!("{}: {e}", key.display()),
    })?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| ConfigError::Invalid {
            key: "tls_key_file",
            reason: e.to_string(),
        })?;
    server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(Arc::new(server)))
}

/// The connector for the upstream, or `None` for `disable`.
pub fn upstream_config(config: &Config) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid {
            key: "upstream_tls_mode",
            reason: e.to_string(),
        })?;
    let client = match config.upstream_tls_mode {
        UpstreamTlsMode::Disable => return Ok(None),
        UpstreamTlsMode::Prefer | UpstreamTlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
        mode @ (UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull) => {
            let roots = Arc::new(root_store(config)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| ConfigError::Invalid {
                    key: "upstream_tls_ca_file",
                    reason: e.to_string(),
                })?;
            let verifier: Arc<dyn ServerCertVerifier> = if mode == UpstreamTlsMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(client)))
}

/// The server name to present (SNI) and, in verify-full, to check.
pub fn upstream_server_name(config: &Config) -> Result<ServerName<'static>, ConfigError> {
    let name = config
        .upstream_tls_server_name
        .clone()
        .unwrap_or_else(|| config.upstream_host.clone());
    ServerName::try_from(name.clone()).map_err(|e| ConfigError::Invalid {
        key: "upstream_tls_server_name",
        reason: format!("`{name}`: {e}"),
    })
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::Invalid {
            key,
            reason: format!("{}: {e}", path.display()),
        })?;
    if certs.is_empty() {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("{}: no certificate found", path.display()),
        });
    }
    Ok(certs)
}

fn root_store(config: &Config) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    match &config.upstream_tls_ca_file {
        Some(path) => {
            for cert in read_certs("upstream_tls_ca_file", path)? {
                roots.add(cert).map_err(|e| ConfigError::Invalid {
                    key: "upstream_tls_ca_file",
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "upstream_tls_ca_file",
                    reason: "required for verify-ca/verify-full: no system CA certificates found"
                        .into(),
                });
            }
        }
    }
    Ok(roots)
}

/// `prefer` / `require`: encryption without authentication of the server, as in libpq.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
