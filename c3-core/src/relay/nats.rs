//! How c3 connects to NATS — the relay and the nodes alike: the server,
//! credentials and TLS a user configures once ([`Nats`]), and the
//! connection events that tell whether messages may have been lost.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

/// Where NATS is and how to authenticate to it, for the relay
/// ([`RelayBuilder::nats`](super::RelayBuilder::nats)) and for nodes in
/// relay mode ([`C3Builder::relay`](crate::C3Builder::relay)).
///
/// ```
/// use c3_core::relay::Nats;
/// let nats = Nats::new("nats://127.0.0.1:4222")
///     .credentials_file("/etc/c3/relay.creds")
///     .root_certificate("/etc/c3/nats-ca.pem");
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Nats {
    pub(crate) url: String,
    pub(crate) credentials_file: Option<PathBuf>,
    pub(crate) nkey_seed: Option<String>,
    pub(crate) root_certificate: Option<PathBuf>,
    pub(crate) require_tls: bool,
    pub(crate) subject_prefix: String,
}

impl Nats {
    /// The NATS server(s): `nats://host:4222`, `tls://host:4222`, or a
    /// comma-separated list of such URLs. A user and password
    /// (`nats://user:password@host:4222`, percent-encoded) or a token
    /// (`nats://token@host:4222`) in the URL authenticate the connection;
    /// they never appear in logs, errors or `Debug` output.
    pub fn new(url: impl Into<String>) -> Self {
        Nats {
            url: url.into(),
            credentials_file: None,
            nkey_seed: None,
            root_certificate: None,
            require_tls: false,
            subject_prefix: "c3".to_owned(),
        }
    }

    /// From `C3_NATS_URL` (required), `C3_NATS_CREDS` (a `.creds` file),
    /// `C3_NATS_NKEY` (an nkey seed), `C3_NATS_CA` (a PEM file of CA
    /// certificates, which also requires TLS) and `C3_NATS_SUBJECT_PREFIX`.
    /// `None` without `C3_NATS_URL`.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(&|k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`from_env`](Self::from_env) from another source of variables.
    pub(crate) fn from_lookup(var: &dyn Fn(&str) -> Option<String>) -> Option<Self> {
        let mut nats = Nats::new(var("C3_NATS_URL")?);
        if let Some(path) = var("C3_NATS_CREDS") {
            nats = nats.credentials_file(path);
        }
        if let Some(seed) = var("C3_NATS_NKEY") {
            nats = nats.nkey(seed);
        }
        if let Some(path) = var("C3_NATS_CA") {
            nats = nats.root_certificate(path);
        }
        if let Some(prefix) = var("C3_NATS_SUBJECT_PREFIX") {
            nats = nats.subject_prefix(prefix);
        }
        Some(nats)
    }

    /// Authenticate with a NATS `.creds` file (JWT and nkey seed).
    #[must_use]
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Authenticate with an nkey seed (`SU…`).
    #[must_use]
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.nkey_seed = Some(seed.into());
        self
    }

    /// Verify the server against the CA certificates in this PEM file
    /// (and require TLS).
    #[must_use]
    pub fn root_certificate(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_certificate = Some(path.into());
        self.require_tls = true;
        self
    }

    /// Refuse a connection without TLS (verified against the system's or
    /// [`root_certificate`](Self::root_certificate)'s CAs).
    #[must_use]
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// The first token of every subject c3 uses (default `c3`): a
    /// channel's messages go to `<prefix>.<channel>`. Relay and nodes must
    /// agree. Must be a valid NATS subject without wildcards.
    #[must_use]
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// Checks what can be checked before connecting.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.url.trim().is_empty() {
            return Err("the NATS URL is empty".to_owned());
        }
        let (_, auth) = split_credentials(&self.url)?;
        if auth.is_some() && (self.credentials_file.is_some() || self.nkey_seed.is_some()) {
            return Err(
                "the NATS URL carries credentials and a credentials file or nkey is set too: give them one way"
                    .to_owned(),
            );
        }
        let p = &self.subject_prefix;
        let token_ok = |t: &str| {
            !t.is_empty()
                && !t
                    .bytes()
                    .any(|b| b <= b' ' || b == b'*' || b == b'>' || b == 0x7f)
        };
        if !p.split('.').all(token_ok) {
            return Err(format!(
                "NATS subject prefix {p:?}: tokens separated by '.', no spaces, no wildcards"
            ));
        }
        Ok(())
    }

    /// Connects, naming the connection `name` (shown by the server's
    /// monitoring), and reports every connection event on `events`.
    pub(crate) async fn connect(
        &self,
        name: &str,
        connect_timeout: Duration,
        events: mpsc::UnboundedSender<async_nats::Event>,
    ) -> Result<async_nats::Client, String> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(connect_timeout)
            .retry_on_initial_connect()
            // Disconnects are what c3 must hear of: each one may have
            // lost messages.
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    let _ = events.send(event);
                }
            });
        if let Some(path) = &self.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| format!("NATS credentials file {}: {e}", path.display()))?;
        }
        if let Some(seed) = &self.nkey_seed {
            options = options.nkey(seed.clone());
        }
        if let Some(path) = &self.root_certificate {
            options = options.add_root_certificates(path.clone());
        }
        if self.require_tls {
            options = options.require_tls(true);
        }
        // async-nats does not read credentials from the URL: take them out
        // and hand them over explicitly (and keep them out of messages).
        let (urls, auth) = split_credentials(&self.url)?;
        match auth {
            Some(Auth::UserPassword(user, password)) => {
                options = options.user_and_password(user, password);
            }
            Some(Auth::Token(token)) => options = options.token(token),
            None => {}
        }
        // `retry_on_initial_connect` returns at once and connects in the
        // background; the caller waits for the `Connected` event.
        options
            .connect(urls.as_str())
            .await
            .map_err(|e| format!("NATS at {urls}: {e}"))
    }
}

impl std::fmt::Debug for Nats {
    /// Without secrets: the URL's credentials and the nkey seed are not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = split_credentials(&self.url).map_or_else(|_| "<invalid>".to_owned(), |(u, _)| u);
        f.debug_struct("Nats")
            .field("url", &url)
            .field("credentials_file", &self.credentials_file)
            .field("nkey_seed", &self.nkey_seed.as_ref().map(|_| "<secret>"))
            .field("root_certificate", &self.root_certificate)
            .field("require_tls", &self.require_tls)
            .field("subject_prefix", &self.subject_prefix)
            .finish()
    }
}

/// Credentials found in a NATS URL.
#[derive(Debug, PartialEq, Eq)]
enum Auth {
    UserPassword(String, String),
    Token(String),
}

/// The URL list without credentials, and the credentials it carried (the
/// same in every address that has any).
fn split_credentials(urls: &str) -> Result<(String, Option<Auth>), String> {
    let mut plain = Vec::new();
    let mut found: Option<Auth> = None;
    for (i, address) in urls.split(',').map(str::trim).enumerate() {
        let (scheme, rest) = match address.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, address),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (host, auth) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let auth = match userinfo.split_once(':') {
                    Some((user, password)) => {
                        Auth::UserPassword(percent_decode(user)?, percent_decode(password)?)
                    }
                    None => Auth::Token(percent_decode(userinfo)?),
                };
                (host, Some(auth))
            }
            None => (authority, None),
        };
        if let Some(auth) = auth {
            match &found {
                Some(other) if *other != auth => {
                    return Err(format!(
                        "NATS URL {}: its addresses carry different credentials",
                        i + 1
                    ));
                }
                _ => found = Some(auth),
            }
        }
        plain.push(match scheme {
            Some(scheme) => format!("{scheme}://{host}{tail}"),
            None => format!("{host}{tail}"),
        });
    }
    Ok((plain.join(","), found))
}

/// A URL component's `%XX` escapes decoded (the one decoder, `tls`'s).
fn percent_decode(text: &str) -> Result<String, String> {
    crate::tls::percent_decode(text).map_err(|e| format!("NATS URL credentials: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_the_url() {
        assert_eq!(
            split_credentials("nats://a:b%40c@h:4222").unwrap(),
            (
                "nats://h:4222".to_owned(),
                Some(Auth::UserPassword("a".into(), "b@c".into()))
            )
        );
        assert_eq!(
            split_credentials("tls://tok@h1:4222, tls://tok@h2:4222/x").unwrap(),
            (
                "tls://h1:4222,tls://h2:4222/x".to_owned(),
                Some(Auth::Token("tok".into()))
            )
        );
        assert_eq!(
            split_credentials("nats://h:4222,h2").unwrap(),
            ("nats://h:4222,h2".to_owned(), None)
        );
        assert!(split_credentials("nats://a:b@h1,nats://a:c@h2").is_err());
        assert!(split_credentials("nats://a:%zz@h").is_err());
        let debug = format!("{:?}", Nats::new("nats://a:pw123@h:4222").nkey("SUseed"));
        assert!(
            !debug.contains("pw123") && !debug.contains("SUseed"),
            "{debug}"
        );
        assert!(
            Nats::new("nats://a:b@h").nkey("SU").validate().is_err(),
            "credentials given two ways"
        );
    }
}
