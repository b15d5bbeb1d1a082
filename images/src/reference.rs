//! Image references, parsed and normalised the way Docker does: `busybox` is
//! `docker.io/library/busybox:latest`, a first component with a `.` or `:` or equal to
//! `localhost` is a registry host, and `@sha256:` pins a manifest digest.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The registry that names without a host refer to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The host that serves the API of [`DEFAULT_REGISTRY`].
pub const DEFAULT_REGISTRY_API_HOST: &str = "registry-1.docker.io";
/// The tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// Errors from parsing a reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The reference is empty.
    #[error("invalid reference: empty")]
    Empty,
    /// A repository path component breaks the naming rules.
    #[error(
        "invalid reference {reference:?}: repository component {component:?} must be lowercase \
         letters and digits separated by '.', '_', '__' or dashes"
    )]
    Component {
        reference: String,
        component: String,
    },
    /// The tag breaks the naming rules.
    #[error("invalid reference {reference:?}: tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    Tag { reference: String, tag: String },
    /// The digest is malformed or uses another algorithm.
    #[error("invalid reference {reference:?}")]
    Digest {
        reference: String,
        #[source]
        source: crate::digest::Error,
    },
    /// The full repository name exceeds 255 characters.
    #[error("invalid reference {0:?}: repository name longer than 255 characters")]
    TooLong(String),
}

/// Result alias for reference parsing.
pub type Result<T> = std::result::Result<T, Error>;

/// A normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/busybox`).
    pub repository: String,
    /// Tag, if given; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// Manifest digest, if given.
    pub digest: Option<Digest>,
}

impl Reference {
    /// The registry and repository, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The name as Docker prints it: `busybox` for `docker.io/library/busybox`,
    /// `user/app` for `docker.io/user/app`, the full name otherwise.
    pub fn familiar_name(&self) -> String {
        if self.registry != DEFAULT_REGISTRY {
            return self.name();
        }
        match self.repository.strip_prefix("library/") {
            Some(short) if !short.contains('/') => short.to_string(),
            _ => self.repository.clone(),
        }
    }

    /// The host to send API requests to (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DEFAULT_REGISTRY_API_HOST
        } else {
            &self.registry
        }
    }

    /// The tag or digest to request the manifest by; the digest wins when both are given.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same repository with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        if input.is_empty() {
            return Err(Error::Empty);
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest.parse().map_err(|source| Error::Digest {
                    reference: input.to_string(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };

        // A ':' after the last '/' starts the tag; one before it belongs to a host:port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(Error::Tag {
                    reference: input.to_string(),
                    tag: tag.to_string(),
                });
            }
        }

        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };

        for component in repository.split('/') {
            if !valid_component(component) {
                return Err(Error::Component {
                    reference: input.to_string(),
                    component: component.to_string(),
                });
            }
        }
        if registry.len() + 1 + repository.len() > 255 {
            return Err(Error::TooLong(input.to_string()));
        }

        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Checks `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`.
fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Checks `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(crate) fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn parses_like_docker() {
        // (input, registry, repository, tag, digest)
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                false,
            ),
            ("user/app", "docker.io", "user/app", Some("latest"), false),
            (
                "docker.io/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "index.docker.io/library/debian:12",
                "docker.io",
                "library/debian",
                Some("12"),
                false,
            ),
            ("localhost/app", "localhost", "app", Some("latest"), false),
            (
                "127.0.0.1:5000/a/b:v1",
                "127.0.0.1:5000",
                "a/b",
                Some("v1"),
                false,
            ),
            (
                "localhost:5000/app",
                "localhost:5000",
                "app",
                Some("latest"),
                false,
            ),
            (
                "quay.io/org/sub/img:t",
                "quay.io",
                "org/sub/img",
                Some("t"),
                false,
            ),
            ("busybox@DIGEST", "docker.io", "library/busybox", None, true),
            (
                "busybox:1@DIGEST",
                "docker.io",
                "library/busybox",
                Some("1"),
                true,
            ),
            (
                "a__b.c-d---e",
                "docker.io",
                "library/a__b.c-d---e",
                Some("latest"),
                false,
            ),
        ];
        for (i, (input, registry, repository, tag, has_digest)) in cases.iter().enumerate() {
            let input = input.replace("DIGEST", DIGEST);
            let r: Reference = input
                .parse()
                .unwrap_or_else(|e| panic!("case {i} {input}: {e}"));
            assert_eq!(r.registry, *registry, "case {i} {input}");
            assert_eq!(r.repository, *repository, "case {i} {input}");
            assert_eq!(r.tag.as_deref(), *tag, "case {i} {input}");
            assert_eq!(r.digest.is_some(), *has_digest, "case {i} {input}");
        }
    }

    #[test]
    fn rejects_invalid_references() {
        let cases = [
            "",
            "Busybox",
            "busybox:",
            "busybox:-tag",
            "a//b",
            "a/b/",
            "-a",
            "a..b",
            "a_.b",
            "busybox@sha256:123",
            "busybox@md5:00",
            "host:5000/UPPER",
        ];
        for input in cases {
            assert!(input.parse::<Reference>().is_err(), "{input:?} parsed");
        }
        let long = format!("a/{}", "b".repeat(260));
        assert_eq!(long.parse::<Reference>(), Err(Error::TooLong(long.clone())));
    }

    #[test]
    fn familiar_name_and_display() {
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(r.familiar_name(), "busybox");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r: Reference = "127.0.0.1:5000/x:y".parse().unwrap();
        assert_eq!(r.familiar_name(), "127.0.0.1:5000/x");
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        assert_eq!(r.manifest_reference(), "y");
    }
}
