//! Credentials (`~/.docker/config.json` `auths`) and `WWW-Authenticate` challenges.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::{Client, Error, Options, Result};
use crate::reference::{Reference, DEFAULT_REGISTRY};

/// The key Docker uses for Docker Hub in `auths`.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// The credentials file of the invoking user: `$DOCKER_CONFIG/config.json` or
/// `$HOME/.docker/config.json`.
pub(super) fn default_auth_file() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Challenge {
    /// `Basic realm="…"`.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses the first challenge of a `WWW-Authenticate` header value.
pub(super) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_once(',').map_or((after, ""), |(v, r)| (v, r))
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = remaining.trim_start_matches([',', ' ']);
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        _ => None,
    }
}

/// The credentials file.
pub struct AuthFile {
    path: PathBuf,
}

impl AuthFile {
    /// Uses the file at `path`.
    pub fn new(path: &Path) -> AuthFile {
        AuthFile {
            path: path.to_path_buf(),
        }
    }

    fn read(&self) -> Result<serde_json::Value> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::AuthFile {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::json!({})),
            Err(source) => Err(Error::Io {
                reference: String::new(),
                op: "read",
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn write(&self, value: &serde_json::Value) -> Result<()> {
        let io = |op, source| Error::Io {
            reference: String::new(),
            op,
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        }
        let bytes = serde_json::to_vec_pretty(value).expect("JSON serialises");
        let tmp = self.path.with_extension("json.tmp");
        fs::write(&tmp, bytes).map_err(|e| io("write", e))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(|e| io("chmod", e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io("replace", e))
    }

    /// Returns the user and password stored for `registry`.
    pub fn get(&self, registry: &str) -> Result<Option<(String, String)>> {
        let value = self.read()?;
        let Some(auths) = value.get("auths").and_then(|a| a.as_object()) else {
            return Ok(None);
        };
        let keys = auth_keys(registry);
        for (key, entry) in auths {
            let host = key
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            let host = host
                .strip_suffix("/v1")
                .or_else(|| host.strip_suffix("/v2"))
                .unwrap_or(host);
            if !keys.iter().any(|k| k == key || k == host) {
                continue;
            }
            let Some(encoded) = entry.get("auth").and_then(|a| a.as_str()) else {
                continue;
            };
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
                continue;
            };
            let decoded = String::from_utf8_lossy(&decoded);
            if let Some((user, password)) = decoded.split_once(':') {
                return Ok(Some((user.to_string(), password.to_string())));
            }
        }
        Ok(None)
    }

    /// Stores credentials for `registry`.
    pub fn set(&self, registry: &str, user: &str, password: &str) -> Result<()> {
        let mut value = self.read()?;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        if !value.get("auths").is_some_and(|a| a.is_object()) {
            value["auths"] = serde_json::json!({});
        }
        value["auths"][auth_keys(registry)[0].as_str()] = serde_json::json!({ "auth": encoded });
        self.write(&value)
    }

    /// Removes the credentials for `registry`. Returns whether there were any.
    pub fn remove(&self, registry: &str) -> Result<bool> {
        let mut value = self.read()?;
        let Some(auths) = value.get_mut("auths").and_then(|a| a.as_object_mut()) else {
            return Ok(false);
        };
        let mut removed = false;
        for key in auth_keys(registry) {
            removed |= auths.remove(&key).is_some();
        }
        if removed {
            self.write(&value)?;
        }
        Ok(removed)
    }
}

/// The `auths` keys for a registry, the one `login` writes first.
fn auth_keys(registry: &str) -> Vec<String> {
    if registry == DEFAULT_REGISTRY
        || registry == "index.docker.io"
        || registry == "registry-1.docker.io"
    {
        vec![
            DOCKER_HUB_AUTH_KEY.to_string(),
            "docker.io".into(),
            "index.docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![registry.to_string()]
    }
}

/// Checks `user` and `password` against `registry` (`GET /v2/` with the challenge's scheme)
/// and stores them in the credentials file.
pub fn login(options: &Options, registry: &str, user: &str, password: &str) -> Result<()> {
    let reference = Reference {
        registry: registry.to_string(),
        repository: String::new(),
        tag: None,
        digest: None,
    };
    let client = Client::with_credentials(
        &reference,
        options,
        Some((user.to_string(), password.to_string())),
    );
    client.ping()?;
    let Some(path) = &options.auth_file else {
        return Err(Error::Io {
            reference: registry.to_string(),
            op: "locate",
            path: PathBuf::from("~/.docker/config.json"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "HOME is not set"),
        });
    };
    AuthFile::new(path).set(registry, user, password)
}

/// Removes stored credentials for `registry`. Returns whether there were any.
pub fn logout(options: &Options, registry: &str) -> Result<bool> {
    match &options.auth_file {
        Some(path) => AuthFile::new(path).remove(registry),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let header = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#;
        assert_eq!(
            parse_challenge(header),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn auth_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = AuthFile::new(&dir.path().join("config.json"));
        assert_eq!(file.get("docker.io").unwrap(), None);
        file.set("docker.io", "u", "p:w").unwrap();
        file.set("127.0.0.1:5000", "x", "y").unwrap();
        assert_eq!(
            file.get("docker.io").unwrap(),
            Some(("u".into(), "p:w".into()))
        );
        assert_eq!(
            file.get("127.0.0.1:5000").unwrap(),
            Some(("x".into(), "y".into()))
        );
        assert!(file.remove("docker.io").unwrap());
        assert_eq!(file.get("docker.io").unwrap(), None);
        assert!(!file.remove("docker.io").unwrap());
    }
}
