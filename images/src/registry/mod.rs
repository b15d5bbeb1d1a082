//! Client for the OCI distribution API: manifests (resolving lists and indexes to one
//! platform), blobs with bounded concurrent and resumable downloads, and authentication
//! (anonymous, Bearer tokens from the `WWW-Authenticate` challenge, Basic credentials from
//! `~/.docker/config.json`).

mod auth;
mod client;
mod manifest;
pub mod progress;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::{login, logout, AuthFile};
pub use client::Client;
pub use manifest::select_platform;
pub use progress::{Progress, Silent};

use crate::digest::Digest;
use crate::oci::Platform;
use crate::reference::Reference;
use crate::store::ImageRecord;
use crate::Images;

/// Errors from the registry client. Each names the reference it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 401 after authentication, or no credentials where the registry needs them.
    #[error("{reference}: unauthorized (401); log in with `bulkhead login {registry}` or check the credentials")]
    Unauthorized { reference: String, registry: String },
    /// 403.
    #[error("{reference}: access denied (403) to {url}")]
    Denied { reference: String, url: String },
    /// 404.
    #[error("{reference}: not found (404): {what}")]
    NotFound { reference: String, what: String },
    /// 5xx responses to every attempt of a request.
    #[error("{reference}: registry returned HTTP {status} to all {attempts} attempts at {url}; the registry is failing, try again later")]
    ServerError {
        reference: String,
        url: String,
        status: u16,
        attempts: u32,
    },
    /// Another unexpected HTTP status.
    #[error("{reference}: unexpected HTTP status {status} from {url}: {body}")]
    Status {
        reference: String,
        url: String,
        status: u16,
        body: String,
    },
    /// The registry host name does not resolve.
    #[error("{reference}: cannot resolve the registry host name {host}; check the name and the DNS configuration")]
    Dns {
        reference: String,
        /// The name without the port.
        host: String,
        #[source]
        source: BoxError,
    },
    /// The TLS handshake or certificate check failed.
    // NOTE: certificates are checked against the Mozilla roots built into bulkhead
    // (webpki-roots), not the system's CA store, so a private CA cannot be trusted yet.
    #[error("{reference}: TLS handshake with {host} failed; the registry needs a certificate from a public CA (bulkhead trusts the Mozilla root list), or use --insecure-registry {host} if it serves plain HTTP")]
    Tls {
        reference: String,
        host: String,
        #[source]
        source: BoxError,
    },
    /// A connect or read timed out.
    #[error("{reference}: timed out after {seconds} s waiting for {host}; check that the registry is up, or raise BULKHEAD_REGISTRY_TIMEOUT (seconds)")]
    Timeout {
        reference: String,
        host: String,
        seconds: u64,
        #[source]
        source: BoxError,
    },
    /// Another connection failure, after retries.
    #[error("{reference}: connection to {host} failed")]
    Connection {
        reference: String,
        host: String,
        #[source]
        source: BoxError,
    },
    /// The token endpoint answered without a token.
    #[error("{reference}: token endpoint {realm} returned no token")]
    Token { reference: String, realm: String },
    /// The `WWW-Authenticate` challenge cannot be understood.
    #[error("{reference}: unsupported authentication challenge {challenge:?}")]
    Challenge {
        reference: String,
        challenge: String,
    },
    /// Downloaded bytes do not match their digest or size.
    #[error("{reference}: {what} failed verification")]
    Verify {
        reference: String,
        what: String,
        #[source]
        source: crate::store::Error,
    },
    /// The manifest pulled by digest does not have that digest.
    #[error("{reference}: manifest digest mismatch: requested {expected}, received {actual}")]
    ManifestDigest {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    /// A manifest or token response is not valid JSON.
    #[error("{reference}: invalid {what}")]
    Json {
        reference: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The manifest has a media type bulkhead cannot pull.
    #[error("{reference}: unsupported manifest media type {media_type:?}")]
    MediaType {
        reference: String,
        media_type: String,
    },
    /// No entry of a manifest list fits the requested platform.
    #[error("{reference}: no manifest for platform {wanted}; available platforms: {available}")]
    Platform {
        reference: String,
        wanted: Platform,
        available: String,
    },
    /// Reading or writing a local file failed.
    #[error("{reference}: failed to {op} {path}")]
    Io {
        reference: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The credentials file is invalid.
    #[error("invalid credentials file {path}")]
    AuthFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The cause of a transport failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Result alias for the registry client.
pub type Result<T> = std::result::Result<T, Error>;

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct Options {
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback hosts always are.
    pub insecure: Vec<String>,
    /// Platform chosen from manifest lists.
    pub platform: Platform,
    /// Credentials file, normally `~/.docker/config.json`.
    pub auth_file: Option<PathBuf>,
    /// Maximum concurrent layer downloads.
    pub max_concurrent_downloads: usize,
    /// Connect timeout, and the maximum time a read may stall. The default is 30 s, or
    /// [`TIMEOUT_ENV`] seconds when that is set.
    pub timeout: Duration,
}

/// Environment variable that sets the default registry timeout, in whole seconds.
pub const TIMEOUT_ENV: &str = "BULKHEAD_REGISTRY_TIMEOUT";

/// Timeout used when [`TIMEOUT_ENV`] is unset or invalid.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads [`TIMEOUT_ENV`]. An invalid value is logged and replaced by the default.
fn timeout_from_env() -> Duration {
    let Ok(value) = std::env::var(TIMEOUT_ENV) else {
        return DEFAULT_TIMEOUT;
    };
    match value.trim().parse::<u64>() {
        Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
        _ => {
            tracing::warn!(
                variable = TIMEOUT_ENV,
                value,
                default_secs = DEFAULT_TIMEOUT.as_secs(),
                "invalid registry timeout, expected a positive number of seconds; using the default"
            );
            DEFAULT_TIMEOUT
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            insecure: Vec::new(),
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            },
            auth_file: auth::default_auth_file(),
            max_concurrent_downloads: 3,
            timeout: timeout_from_env(),
        }
    }
}

/// Pulls `reference` into the store: resolves the manifest, downloads config and layers into
/// an ingest, verifies everything, builds the root disk and records the image.
pub fn pull(
    images: &Images,
    reference: &Reference,
    progress: &dyn Progress,
) -> crate::Result<ImageRecord> {
    let client = Client::new(reference, images.registry_options())?;
    let ingest = images.store().ingest()?;

    let resolved = manifest::resolve(&client, reference, &images.registry_options().platform)?;
    progress.message(&format!(
        "{}: resolved to manifest {}",
        reference, resolved.manifest_digest
    ));
    ingest
        .write_blob(
            &resolved.manifest_bytes,
            Some((
                &resolved.manifest_digest,
                resolved.manifest_bytes.len() as u64,
            )),
        )
        .map_err(|source| Error::Verify {
            reference: reference.to_string(),
            what: "manifest".into(),
            source,
        })?;

    client.fetch_blobs(&ingest, &resolved.manifest, progress)?;

    let tags = reference
        .tag
        .iter()
        .map(|tag| reference.with_tag(tag).to_string())
        .collect();
    let repo_digests = vec![format!("{}@{}", reference.name(), resolved.top_digest)];
    progress.message(&format!("{reference}: building root disk"));
    let record = images.commit_import(&ingest, resolved.manifest_digest, tags, repo_digests)?;
    progress.message(&format!("Digest: {}", resolved.top_digest));
    Ok(record)
}
