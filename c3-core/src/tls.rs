//! TLS to PostgreSQL, as libpq users know it, on rustls (no OpenSSL).
//!
//! A connection string's `sslmode` (or `PGSSLMODE`) decides what c3 does:
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (libpq's default) | if the server offers it, else plaintext | not verified |
//! | `require` | always; plaintext is refused | not verified — *unless* `sslrootcert` is given, then as `verify-ca` (as libpq). c3 logs a warning once per connection kind: encryption without verification does not stop an active attacker |
//! | `verify-ca` | always | chain verified against the trusted roots |
//! | `verify-full` | always | chain verified, and the host name (or IP) must match |
//!
//! Trusted roots: `sslrootcert` (or `PGSSLROOTCERT`) — a PEM file, or
//! `system` — else the platform's store (`rustls-native-certs`). A client
//! certificate: `sslcert` + `sslkey` (or `PGSSLCERT`/`PGSSLKEY`), PEM. For
//! anything else (another verifier, pinned keys, hardware keys) give the
//! builder a `rustls::ClientConfig` with
//! [`C3Builder::tls_config`](crate::C3Builder::tls_config): `sslmode` then
//! only decides *whether* TLS is used.
//!
//! tokio-postgres itself knows `disable`/`prefer`/`require`; c3 takes the
//! libpq words out of the string, hands tokio-postgres the mode it knows and
//! does the verification in its rustls verifier.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Once};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, no verification (libpq's default).
    Prefer,
    /// TLS always; the certificate is verified only if `sslrootcert` is given.
    Require,
    /// TLS always; the certificate chain is verified.
    VerifyCa,
    /// TLS always; the chain and the host name are verified.
    VerifyFull,
}

impl SslMode {
    /// The libpq word.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plaintext first; TLS-when-offered is the
            // closest safe reading.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode {other:?} (disable, allow, prefer, require, verify-ca, verify-full)"
                ));
            }
        })
    }

    /// The mode tokio-postgres is given: it only knows the first three.
    fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection string as tokio-postgres takes it, with the TLS connector
/// its `sslmode`/`sslrootcert`/`sslcert`/`sslkey` ask for — for a pool the
/// application builds itself (e.g. `deadpool_postgres::Manager::from_config`)
/// and lends to c3 with [`C3Builder::pool`](crate::C3Builder::pool).
///
/// # Errors
///
/// [`ErrorKind::Config`](crate::ErrorKind::Config): an invalid URL or
/// `sslmode`, an unreadable certificate file, no trusted roots for a
/// verifying mode.
pub fn connect_config(
    url: &str,
) -> crate::error::Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    let (config, tls) = parse(url).map_err(crate::error::Error::config)?;
    let connector = tls
        .connector(None, "the application's pool")
        .map_err(crate::error::Error::config)?;
    Ok((config, connector))
}

/// The TLS half of a connection string.
#[derive(Debug, Clone)]
pub(crate) struct TlsSettings {
    pub(crate) mode: SslMode,
    root_cert: Option<String>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsSettings {
    /// `sslrootcert`, if given (the relay's replication session applies
    /// its own TLS with it).
    #[cfg(feature = "relay")]
    pub(crate) fn root_cert(&self) -> Option<&str> {
        self.root_cert.as_deref()
    }

    /// `sslcert` and `sslkey`, if given.
    #[cfg(feature = "relay")]
    pub(crate) fn client_cert(&self) -> Option<&(PathBuf, PathBuf)> {
        self.client_cert.as_ref()
    }
}

/// Parses a PostgreSQL URL or libpq key=value string into what
/// tokio-postgres understands and the TLS settings c3 applies itself.
pub(crate) fn parse(url: &str) -> Result<(tokio_postgres::Config, TlsSettings), String> {
    let (rest, ssl) = take_ssl_params(url)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let get = |k: &str, var: &str| {
        ssl.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .or_else(|| env(var))
    };
    let mode = match get("sslmode", "PGSSLMODE") {
        Some(m) => SslMode::parse(&m)?,
        None => SslMode::Prefer,
    };
    let client_cert = match (get("sslcert", "PGSSLCERT"), get("sslkey", "PGSSLKEY")) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        _ => return Err("sslcert and sslkey must be given together".into()),
    };
    let mut config = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
    config.ssl_mode(mode.for_tokio_postgres());
    Ok((
        config,
        TlsSettings {
            mode,
            root_cert: get("sslrootcert", "PGSSLROOTCERT"),
            client_cert,
        },
    ))
}

const SSL_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Removes the `ssl*` parameters c3 handles from a URL (`postgres://…?a=b`)
/// or key=value string, returning the rest and the removed (name, value)
/// pairs in order.
fn take_ssl_params(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        take_from_url(url)
    } else {
        take_from_keywords(url)
    }
}

/// [`take_ssl_params`] for a URL: the SSL parameters of its query string.
fn take_from_url(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut ssl = Vec::new();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), ssl));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if SSL_PARAMS.contains(&k) {
            ssl.push((k.to_owned(), percent_decode(v)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, ssl))
}

/// [`take_ssl_params`] for a `key=value` string, whose values may be
/// single-quoted with backslash escapes.
fn take_from_keywords(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut ssl = Vec::new();
    let mut rest = String::new();
    let mut chars = url.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("invalid connection string: {key:?} has no value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let (raw, value) = keyword_value(&mut chars)?;
        if SSL_PARAMS.contains(&key.as_str()) {
            ssl.push((key, value));
        } else {
            if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(&key);
            rest.push('=');
            rest.push_str(&raw);
        }
    }
    Ok((rest, ssl))
}

/// One value of a `key=value` string: as written (to pass on unchanged)
/// and unquoted.
fn keyword_value(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<(String, String), String> {
    let mut raw = String::new();
    let mut value = String::new();
    if chars.next_if_eq(&'\'').is_none() {
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            raw.push(c);
            value.push(c);
        }
        return Ok((raw, value));
    }
    raw.push('\'');
    loop {
        match chars.next() {
            Some('\\') => {
                let c = chars.next().ok_or("unterminated quoted value")?;
                raw.push('\\');
                raw.push(c);
                value.push(c);
            }
            Some('\'') => {
                raw.push('\'');
                return Ok((raw, value));
            }
            Some(c) => {
                raw.push(c);
                value.push(c);
            }
            None => return Err("unterminated quoted value".into()),
        }
    }
}

/// `%XX` escapes of a URL component decoded (also NATS URLs' credentials).
pub(crate) fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or("bad percent-encoding in the URL")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad percent-encoding in the URL")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a URL parameter is not UTF-8".into())
}

/// The crypto c3's own TLS connections use: the process-level default when
/// the application installed one (`CryptoProvider::install_default`, e.g.
/// aws-lc-rs for its post-quantum key exchange), else *ring*, which c3
/// depends on because it builds without a C toolchain beyond `cc`.
///
/// rustls 0.23.48 deprecated `ring::default_provider` because *ring* offers
/// no post-quantum key exchange, and gives no other way to build a *ring*
/// provider; rustls itself picks it the same way (with the same `allow`)
/// when *ring* is the only provider compiled in. The deprecation is about
/// what the provider lacks, not about a replacement API: the choice stays
/// the application's, through `install_default`.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    if let Some(installed) = rustls::crypto::CryptoProvider::get_default() {
        return Arc::clone(installed);
    }
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsSettings {
    /// The connector for one kind of connection (`role`: "the pool", "the
    /// LISTEN connection"), from `custom` if the builder was given one.
    pub(crate) fn connector(
        &self,
        custom: Option<&Arc<ClientConfig>>,
        role: &'static str,
    ) -> Result<MakeRustlsConnect, String> {
        if let Some(c) = custom {
            return Ok(MakeRustlsConnect::new((**c).clone()));
        }
        let provider = crypto_provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let verify_chain = match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::Disable | SslMode::Prefer => false,
        };
        let verifier: Arc<dyn ServerCertVerifier> = if verify_chain {
            let roots = Arc::new(self.roots()?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            if self.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        } else {
            if self.mode == SslMode::Require {
                static WARNED: Once = Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        target: "c3::tls",
                        connection = role,
                        "sslmode=require encrypts but does not verify the server's certificate \
                         (no sslrootcert); use sslmode=verify-full to verify it"
                    );
                });
            }
            Arc::new(Unverified(provider))
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect())
                    .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match self.root_cert.as_deref() {
            Some(path) if path != "system" => {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?
                {
                    let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert {path}: {e}"))?;
                }
            }
            _ => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        if roots.is_empty() {
            return Err(format!(
                "sslmode={} needs trusted roots, and none were found (sslrootcert, or the platform store)",
                self.mode
            ));
        }
        Ok(roots)
    }
}

/// `verify-ca`: the chain must verify; the name need not match.
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
        // webpki checks the name last, so this error means the chain held.
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

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without roots: any certificate, but the handshake
/// itself is still checked (the server proves it holds the certificate's key).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Says what a failed connection attempt was about, when TLS was the cause:
/// which connection, which `sslmode`, which check.
pub(crate) fn describe(
    role: &str,
    mode: SslMode,
    err: &(dyn std::error::Error + 'static),
) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(format!(
                "TLS to PostgreSQL failed for {role} (sslmode={mode}): {}",
                explain(t)
            ));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(format!(
                "TLS to PostgreSQL failed for {role} (sslmode={mode}): {}",
                explain(t)
            ));
        }
        cur = e.source();
    }
    let text = err.to_string();
    if text.contains("server does not support TLS") {
        return Some(format!(
            "TLS to PostgreSQL failed for {role} (sslmode={mode}): the server does not offer TLS"
        ));
    }
    None
}

fn explain(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "host name check failed: the server's certificate is not valid for this host ({e})"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!("certificate chain check failed: not signed by a trusted root ({e})"),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::NotValidYet
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYetContext { .. },
        ) => format!("certificate validity check failed ({e})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The application's provider, once installed, is the one c3 uses (an
    /// application that chose aws-lc-rs for post-quantum key exchange keeps
    /// it on c3's connections). Installing *ring*'s is harmless to the other
    /// tests in this process: it is what they would use anyway.
    #[test]
    fn an_installed_process_provider_is_used() {
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let installed = rustls::crypto::CryptoProvider::get_default().expect("installed");
        assert!(Arc::ptr_eq(&crypto_provider(), installed));
    }

    #[test]
    fn libpq_words_are_taken_out_of_urls_and_key_value_strings() {
        let (cfg, tls) =
            parse("postgres://u@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem")
                .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(cfg.get_application_name(), Some("x"));

        let (cfg, tls) =
            parse("host=h user=u sslmode=verify-ca sslrootcert='/a b/ca.pem' dbname=d").unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.root_cert.as_deref(), Some("/a b/ca.pem"));
        assert_eq!(cfg.get_dbname(), Some("d"));

        let (cfg, tls) = parse("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(
            (tls.mode, cfg.get_ssl_mode()),
            (SslMode::Disable, tokio_postgres::config::SslMode::Disable)
        );
        assert!(parse("postgres://u@h/db?sslmode=sometimes").is_err());
        assert!(
            parse("postgres://u@h/db?sslcert=/c.pem").is_err(),
            "sslcert without sslkey"
        );
    }
}
