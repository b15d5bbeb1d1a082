//! Manifest resolution: fetch by tag or digest, verify, and descend from a manifest list or
//! index to the manifest of one platform.

use crate::digest::Digest;
use crate::oci::{self, Descriptor, Index, Manifest, ManifestKind, Platform};
use crate::reference::Reference;

use super::{Client, Error, Result};

/// A manifest resolved to one platform.
pub(super) struct Resolved {
    /// Digest of what the reference names: the index for multi-platform images.
    pub top_digest: Digest,
    /// The platform manifest's bytes, digest and parsed form.
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
}

pub(super) fn resolve(
    client: &Client,
    reference: &Reference,
    platform: &Platform,
) -> Result<Resolved> {
    let name = reference.to_string();
    let (bytes, media_type, digest) = fetch_verified(
        client,
        reference,
        &reference.manifest_reference(),
        reference.digest,
    )?;
    let kind: ManifestKind = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        reference: name.clone(),
        what: "manifest".into(),
        source,
    })?;
    let media_type = kind.media_type.clone().or(media_type).unwrap_or_default();

    let top_digest = digest;
    let (bytes, digest) = if oci::is_index(&media_type)
        || (media_type.is_empty() && kind.manifests.is_some())
    {
        let index: Index = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            reference: name.clone(),
            what: "manifest list".into(),
            source,
        })?;
        let chosen = select_platform(&index, platform).map_err(|available| Error::Platform {
            reference: name.clone(),
            wanted: platform.clone(),
            available,
        })?;
        let (bytes, _, digest) = fetch_verified(
            client,
            reference,
            &chosen.digest.to_string(),
            Some(chosen.digest),
        )?;
        (bytes, digest)
    } else if media_type == oci::OCI_MANIFEST
        || media_type == oci::DOCKER_MANIFEST
        || media_type.is_empty()
    {
        (bytes, digest)
    } else {
        return Err(Error::MediaType {
            reference: name,
            media_type,
        });
    };

    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        reference: name.clone(),
        what: "manifest".into(),
        source,
    })?;
    Ok(Resolved {
        top_digest,
        manifest_bytes: bytes,
        manifest_digest: digest,
        manifest,
    })
}

/// Fetches a manifest and checks its bytes against `expected` (a pull by digest) or the
/// `Docker-Content-Digest` header.
fn fetch_verified(
    client: &Client,
    reference: &Reference,
    tag_or_digest: &str,
    expected: Option<Digest>,
) -> Result<(Vec<u8>, Option<String>, Digest)> {
    let (bytes, media_type, header_digest) = client.manifest(tag_or_digest)?;
    let actual = Digest::of(&bytes);
    if let Some(expected) = expected.or(header_digest) {
        if actual != expected {
            return Err(Error::ManifestDigest {
                reference: reference.to_string(),
                expected,
                actual,
            });
        }
    }
    Ok((bytes, media_type, actual))
}

/// Picks the entry of `index` for `wanted`. Attestation manifests (platform `unknown/unknown`)
/// and entries without a platform are skipped. When nothing fits, returns the platforms that
/// exist, comma-separated.
pub fn select_platform<'a>(
    index: &'a Index,
    wanted: &Platform,
) -> std::result::Result<&'a Descriptor, String> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os != "unknown" && p.architecture != "unknown")
                && !d.annotations.contains_key("vnd.docker.reference.type")
        })
        .collect();
    let fits = |d: &&&Descriptor, strict_variant: bool| {
        let p = d.platform.as_ref().expect("candidates have a platform");
        p.os == wanted.os
            && p.architecture == wanted.architecture
            && (!strict_variant || wanted.variant.is_none() || p.variant == wanted.variant)
    };
    if let Some(found) = candidates
        .iter()
        .find(|d| fits(d, true))
        .or_else(|| candidates.iter().find(|d| fits(d, false)))
    {
        return Ok(found);
    }
    let available: Vec<String> = candidates
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| p.to_string())
        .collect();
    Err(if available.is_empty() {
        "none".to_string()
    } else {
        available.join(", ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(platform: Option<(&str, &str)>, attestation: bool) -> serde_json::Value {
        let mut value = serde_json::json!({
            "mediaType": oci::OCI_MANIFEST,
            "digest": Digest::of(format!("{platform:?}{attestation}").as_bytes()),
            "size": 1,
        });
        if let Some((os, arch)) = platform {
            value["platform"] = serde_json::json!({"os": os, "architecture": arch});
        }
        if attestation {
            value["annotations"] =
                serde_json::json!({"vnd.docker.reference.type": "attestation-manifest"});
        }
        value
    }

    fn index(entries: Vec<serde_json::Value>) -> Index {
        serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": entries}))
            .unwrap()
    }

    #[test]
    fn select_skips_attestations() {
        let index = index(vec![
            entry(Some(("unknown", "unknown")), true),
            entry(Some(("linux", "arm64")), false),
            entry(Some(("linux", "amd64")), false),
        ]);
        let wanted: Platform = "linux/amd64".parse().unwrap();
        let chosen = select_platform(&index, &wanted).unwrap();
        assert_eq!(chosen.platform.as_ref().unwrap().architecture, "amd64");
    }

    #[test]
    fn select_lists_available_platforms() {
        let index = index(vec![
            entry(Some(("linux", "arm64")), false),
            entry(Some(("unknown", "unknown")), true),
        ]);
        let wanted: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(select_platform(&index, &wanted).unwrap_err(), "linux/arm64");
    }
}
