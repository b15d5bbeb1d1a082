//! HTTP client for one repository: authentication, retries and blob downloads.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::auth::{parse_challenge, AuthFile, Challenge};
use super::progress::Progress;
use super::{Error, Options, Result};
use crate::digest::Digest;
use crate::oci::{self, Descriptor, Manifest};
use crate::reference::Reference;
use crate::store::{self, Ingest};

/// Attempts per request on 5xx responses and connection failures. Timeouts are not retried,
/// because each already waited the full timeout.
const ATTEMPTS: u32 = 5;
/// Delay before the first retry; it doubles for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Lifetime assumed for tokens whose response has no `expires_in` (the distribution spec's default).
const DEFAULT_TOKEN_SECONDS: u64 = 60;
/// A token is renewed this long before it expires, or after half its lifetime if that is
/// shorter, so that a request does not arrive with a token that expired on the way.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(5);
/// Largest manifest accepted.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

enum AuthState {
    Anonymous,
    Basic,
    Bearer {
        token: String,
        /// When [`Client::authorization`] fetches a new token instead of sending this one.
        renew_at: Instant,
        challenge: Challenge,
    },
}

/// A client for one repository of one registry.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    host: String,
    registry: String,
    repository: String,
    reference: String,
    credentials: Option<(String, String)>,
    auth: Mutex<AuthState>,
    max_concurrent: usize,
    timeout: Duration,
}

/// Returns the name or address of `host`, without the port and the brackets of IPv6.
fn host_name(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        })
    }
}

/// Returns whether `host` (with optional port) is a loopback name or address.
fn is_loopback(host: &str) -> bool {
    let name = host_name(host);
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    /// Creates a client for the repository of `reference`, with credentials from the auth file.
    pub fn new(reference: &Reference, options: &Options) -> Result<Client> {
        let credentials = match &options.auth_file {
            Some(path) => AuthFile::new(path).get(&reference.registry)?,
            None => None,
        };
        Ok(Client::with_credentials(reference, options, credentials))
    }

    pub(super) fn with_credentials(
        reference: &Reference,
        options: &Options,
        credentials: Option<(String, String)>,
    ) -> Client {
        let host = reference.api_host().to_string();
        let insecure = is_loopback(&host)
            || options
                .insecure
                .iter()
                .any(|h| *h == reference.registry || *h == host);
        let scheme = if insecure { "http" } else { "https" };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(options.timeout)
            .timeout_read(options.timeout)
            .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent,
            base: format!("{scheme}://{host}"),
            host,
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            // `login` has a registry but no repository.
            reference: if reference.repository.is_empty() {
                reference.registry.clone()
            } else {
                reference.to_string()
            },
            credentials,
            auth: Mutex::new(AuthState::Anonymous),
            max_concurrent: options.max_concurrent_downloads.max(1),
            timeout: options.timeout,
        }
    }

    /// Checks that the registry answers `GET /v2/` (authenticating if it asks).
    pub fn ping(&self) -> Result<()> {
        self.get(&format!("{}/v2/", self.base), None, None)
            .map(|_| ())
    }

    /// Fetches a manifest by tag or digest. Returns its bytes, the Content-Type and the
    /// `Docker-Content-Digest` header.
    pub(super) fn manifest(
        &self,
        tag_or_digest: &str,
    ) -> Result<(Vec<u8>, Option<String>, Option<Digest>)> {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base, self.repository, tag_or_digest
        );
        let response = self.get(&url, Some(&oci::MANIFEST_ACCEPT.join(", ")), None)?;
        let media_type = response
            .header("Content-Type")
            .map(|t| t.split(';').next().unwrap_or(t).trim().to_string());
        let header_digest = response
            .header("Docker-Content-Digest")
            .and_then(|d| d.parse().ok());
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(MAX_MANIFEST_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| self.body_error(e))?;
        Ok((bytes, media_type, header_digest))
    }

    /// Downloads the config and the layers of `manifest` into `ingest`, layers concurrently
    /// (at most the configured number at a time). Blobs already in the store are skipped.
    pub(super) fn fetch_blobs(
        &self,
        ingest: &Ingest,
        manifest: &Manifest,
        progress: &dyn Progress,
    ) -> Result<()> {
        self.fetch_blob(ingest, &manifest.config, progress)?;

        let queue = Mutex::new(manifest.layers.iter().collect::<VecDeque<&Descriptor>>());
        let failed = AtomicBool::new(false);
        let first_error = Mutex::new(None);
        let workers = self.max_concurrent.min(manifest.layers.len());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let Some(layer) = queue.lock().expect("queue lock").pop_front() else {
                        return;
                    };
                    if let Err(error) = self.fetch_blob(ingest, layer, progress) {
                        failed.store(true, Ordering::Relaxed);
                        first_error.lock().expect("error lock").get_or_insert(error);
                        return;
                    }
                });
            }
        });
        match first_error.into_inner().expect("error lock") {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Downloads one blob, resuming with a Range request after a broken connection, and
    /// verifies its size and digest.
    fn fetch_blob(
        &self,
        ingest: &Ingest,
        descriptor: &Descriptor,
        progress: &dyn Progress,
    ) -> Result<()> {
        let digest = descriptor.digest;
        let bar = progress.blob(&digest, descriptor.size);
        if ingest.has_blob(&digest) {
            bar.finish("already present");
            return Ok(());
        }

        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, digest);
        let path = ingest.dir().join(format!("partial-{}", digest.hex()));
        let io_err = |op, source| Error::Io {
            reference: self.reference.clone(),
            op,
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("create", e))?;
        let mut hasher = Sha256::new();
        let mut have = 0u64;

        for attempt in 1..=ATTEMPTS {
            let response = self.get(&url, None, (have > 0).then_some(have))?;
            if have > 0 && response.status() != 206 {
                // The server ignored the range; start over.
                restart(&mut file).map_err(|e| io_err("truncate", e))?;
                hasher = Sha256::new();
                have = 0;
                bar.advance(0, true);
            }
            let copied = copy_hashing(
                response.into_reader(),
                &mut file,
                &mut hasher,
                &mut have,
                descriptor.size,
                &*bar,
            );
            let error = match copied {
                // A body that ends early without an error (a chunked response cut between
                // chunks) is resumed like a broken connection.
                Ok(()) if have >= descriptor.size => break,
                Ok(()) => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body ended after {have} of {} bytes", descriptor.size),
                ),
                Err(error) => error,
            };
            let resumable = attempt < ATTEMPTS
                && !matches!(
                    error.kind(),
                    io::ErrorKind::InvalidData
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                );
            if !resumable {
                return Err(self.body_error(error));
            }
            tracing::warn!(blob = %digest, have, attempt, %error, "blob download interrupted, resuming");
            std::thread::sleep(FIRST_BACKOFF * 2u32.pow(attempt - 1));
        }

        let verify = |source| Error::Verify {
            reference: self.reference.clone(),
            what: format!("blob {digest}"),
            source,
        };
        if have != descriptor.size {
            return Err(verify(store::Error::SizeMismatch {
                digest,
                expected: descriptor.size,
                actual: have,
            }));
        }
        let actual = Digest::from_sha256(hasher);
        if actual != digest {
            return Err(verify(store::Error::DigestMismatch {
                expected: digest,
                actual,
            }));
        }
        file.sync_all().map_err(|e| io_err("fsync", e))?;
        drop(file);
        ingest.adopt_blob(&path, &digest).map_err(verify)?;
        bar.finish("done");
        Ok(())
    }

    /// Sends a GET with authentication, answering one 401 challenge and retrying 5xx answers
    /// and connection failures with exponential backoff.
    fn get(&self, url: &str, accept: Option<&str>, range: Option<u64>) -> Result<ureq::Response> {
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.agent.get(url);
            if let Some(accept) = accept {
                request = request.set("Accept", accept);
            }
            if let Some(offset) = range {
                request = request.set("Range", &format!("bytes={offset}-"));
            }
            if let Some(header) = self.authorization()? {
                request = request.set("Authorization", &header);
            }

            let error = match request.call() {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            match error {
                ureq::Error::Status(401, response) if !challenged => {
                    challenged = true;
                    let header = response
                        .header("WWW-Authenticate")
                        .unwrap_or_default()
                        .to_string();
                    self.authenticate(&header)?;
                }
                ureq::Error::Status(401, _) => {
                    return Err(Error::Unauthorized {
                        reference: self.reference.clone(),
                        registry: self.registry.clone(),
                    })
                }
                ureq::Error::Status(403, _) => {
                    return Err(Error::Denied {
                        reference: self.reference.clone(),
                        url: url.to_string(),
                    })
                }
                ureq::Error::Status(404, _) => {
                    return Err(Error::NotFound {
                        reference: self.reference.clone(),
                        what: url.to_string(),
                    })
                }
                ureq::Error::Status(status, _) if status >= 500 && attempt < ATTEMPTS => {
                    tracing::warn!(url, status, attempt, "registry error, retrying");
                    std::thread::sleep(FIRST_BACKOFF * 2u32.pow(attempt - 1));
                }
                ureq::Error::Status(status, _) if status >= 500 => {
                    return Err(Error::ServerError {
                        reference: self.reference.clone(),
                        url: url.to_string(),
                        status,
                        attempts: attempt,
                    })
                }
                ureq::Error::Status(status, response) => {
                    let mut body = response.into_string().unwrap_or_default();
                    body.truncate(300);
                    return Err(Error::Status {
                        reference: self.reference.clone(),
                        url: url.to_string(),
                        status,
                        body,
                    });
                }
                ureq::Error::Transport(transport)
                    if attempt < ATTEMPTS
                        && matches!(
                            transport.kind(),
                            ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Io
                        )
                        && !is_tls(&transport)
                        && !is_timeout(&transport)
                        && !(is_loopback(&self.host) && is_refused(&transport)) =>
                {
                    tracing::warn!(url, attempt, error = %transport, "connection failed, retrying");
                    std::thread::sleep(FIRST_BACKOFF * 2u32.pow(attempt - 1));
                }
                error => return Err(self.transport(error)),
            }
        }
    }

    /// Classifies a transport error for the message.
    fn transport(&self, error: ureq::Error) -> Error {
        let reference = self.reference.clone();
        let host = self.host.clone();
        let (kind, tls, timeout) = match &error {
            ureq::Error::Transport(t) => (Some(t.kind()), is_tls(t), is_timeout(t)),
            ureq::Error::Status(..) => (None, false, false),
        };
        let source: super::BoxError = Box::new(error);
        if kind == Some(ureq::ErrorKind::Dns) {
            Error::Dns {
                reference,
                host: host_name(&host).to_string(),
                source,
            }
        } else if tls {
            Error::Tls {
                reference,
                host,
                source,
            }
        } else if timeout {
            Error::Timeout {
                reference,
                host,
                seconds: self.timeout.as_secs(),
                source,
            }
        } else {
            Error::Connection {
                reference,
                host,
                source,
            }
        }
    }

    /// Classifies a failure while reading a response body.
    fn body_error(&self, error: io::Error) -> Error {
        let reference = self.reference.clone();
        let host = self.host.clone();
        if matches!(
            error.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ) {
            Error::Timeout {
                reference,
                host,
                seconds: self.timeout.as_secs(),
                source: Box::new(error),
            }
        } else {
            Error::Connection {
                reference,
                host,
                source: Box::new(error),
            }
        }
    }

    /// The Authorization header for the next request, renewing an expired token.
    fn authorization(&self) -> Result<Option<String>> {
        let mut state = self.auth.lock().expect("auth lock");
        match &*state {
            AuthState::Anonymous => Ok(None),
            AuthState::Basic => Ok(self.basic()),
            AuthState::Bearer {
                token,
                renew_at,
                challenge,
            } => {
                if Instant::now() < *renew_at {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let challenge = challenge.clone();
                *state = self.fetch_token(challenge)?;
                match &*state {
                    AuthState::Bearer { token, .. } => Ok(Some(format!("Bearer {token}"))),
                    _ => Ok(None),
                }
            }
        }
    }

    fn basic(&self) -> Option<String> {
        self.credentials.as_ref().map(|(user, password)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        })
    }

    /// Answers a 401 challenge.
    fn authenticate(&self, header: &str) -> Result<()> {
        let challenge = parse_challenge(header).ok_or_else(|| Error::Challenge {
            reference: self.reference.clone(),
            challenge: header.to_string(),
        })?;
        let state = match challenge {
            Challenge::Basic if self.credentials.is_some() => AuthState::Basic,
            Challenge::Basic => {
                return Err(Error::Unauthorized {
                    reference: self.reference.clone(),
                    registry: self.registry.clone(),
                })
            }
            bearer => self.fetch_token(bearer)?,
        };
        *self.auth.lock().expect("auth lock") = state;
        Ok(())
    }

    /// Requests a token from the challenge's realm, with Basic credentials if there are any.
    fn fetch_token(&self, challenge: Challenge) -> Result<AuthState> {
        let Challenge::Bearer {
            realm,
            service,
            scope,
        } = &challenge
        else {
            return Ok(AuthState::Basic);
        };
        let default_scope = format!("repository:{}:pull", self.repository);
        let scope = if self.repository.is_empty() {
            scope.clone()
        } else {
            Some(scope.clone().unwrap_or(default_scope))
        };
        let mut request = self.agent.get(realm);
        if let Some(service) = service {
            request = request.query("service", service);
        }
        if let Some(scope) = &scope {
            request = request.query("scope", scope);
        }
        if let Some(basic) = self.basic() {
            request = request.set("Authorization", &basic);
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(401 | 403, _)) => {
                return Err(Error::Unauthorized {
                    reference: self.reference.clone(),
                    registry: self.registry.clone(),
                })
            }
            Err(ureq::Error::Status(status, response)) => {
                let mut body = response.into_string().unwrap_or_default();
                body.truncate(300);
                return Err(Error::Status {
                    reference: self.reference.clone(),
                    url: realm.clone(),
                    status,
                    body,
                });
            }
            Err(error) => return Err(self.transport(error)),
        };

        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = response.into_string().map_err(|e| self.body_error(e))?;
        let parsed: TokenResponse = serde_json::from_str(&body).map_err(|source| Error::Json {
            reference: self.reference.clone(),
            what: "token response".into(),
            source,
        })?;
        let token = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| Error::Token {
                reference: self.reference.clone(),
                realm: realm.clone(),
            })?;
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(DEFAULT_TOKEN_SECONDS));
        tracing::debug!(
            realm,
            lifetime_secs = lifetime.as_secs(),
            "obtained registry token"
        );
        Ok(AuthState::Bearer {
            token,
            renew_at: Instant::now() + lifetime - TOKEN_RENEW_MARGIN.min(lifetime / 2),
            challenge,
        })
    }
}

/// Returns whether the connection was refused. On a loopback registry that means nothing
/// listens on the port, and a retry does not change that.
fn is_refused(transport: &ureq::Transport) -> bool {
    let mut source = std::error::Error::source(transport);
    while let Some(error) = source {
        if let Some(io_error) = error.downcast_ref::<io::Error>() {
            if io_error.kind() == io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = error.source();
    }
    false
}

// ureq 2 reports TLS failures and timeouts with kind `Io` or `ConnectionFailed`, so these two
// recognise them by the text of the error's message and causes. The error's own display starts
// with the URL, whose host or path may contain any of the words, so it is left out.
fn cause_text(transport: &ureq::Transport) -> String {
    let mut text = transport.message().unwrap_or_default().to_ascii_lowercase();
    let mut source = std::error::Error::source(transport);
    while let Some(error) = source {
        text.push('\n');
        text.push_str(&error.to_string().to_ascii_lowercase());
        source = error.source();
    }
    text
}

fn is_tls(transport: &ureq::Transport) -> bool {
    let text = cause_text(transport);
    text.contains("tls") || text.contains("certificate") || text.contains("handshake")
}

fn is_timeout(transport: &ureq::Transport) -> bool {
    let mut source = std::error::Error::source(transport);
    while let Some(error) = source {
        if let Some(io_error) = error.downcast_ref::<io::Error>() {
            if matches!(
                io_error.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) {
                return true;
            }
        }
        source = error.source();
    }
    let text = cause_text(transport);
    text.contains("timed out") || text.contains("timeout")
}

fn restart(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    Ok(())
}

/// Copies a response body into `file`, hashing and counting. Fails on a stream longer than
/// `limit`, which cannot match the descriptor.
fn copy_hashing(
    mut reader: impl Read,
    file: &mut File,
    hasher: &mut Sha256,
    have: &mut u64,
    limit: u64,
    bar: &dyn super::progress::BlobProgress,
) -> io::Result<()> {
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        file.write_all(&buffer[..n])?;
        hasher.update(&buffer[..n]);
        *have += n as u64;
        bar.advance(n as u64, false);
        if *have > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob is larger than its descriptor's {limit} bytes"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_loopback_fails_without_retry() {
        // A port that was just free: nothing listens there, so connections are refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let reference: Reference = format!("127.0.0.1:{port}/nothing:latest").parse().unwrap();
        let options = Options {
            auth_file: None,
            ..Options::default()
        };
        let client = Client::new(&reference, &options).unwrap();

        let started = Instant::now();
        let error = client.ping().unwrap_err();

        assert!(matches!(error, Error::Connection { .. }), "{error:?}");
        // A retry would first sleep FIRST_BACKOFF.
        assert!(started.elapsed() < FIRST_BACKOFF, "{:?}", started.elapsed());
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "[::1]:5000",
            "127.1.2.3:80",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "docker.io",
            "registry-1.docker.io",
            "10.0.0.1:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
