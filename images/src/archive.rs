//! Loading `docker save` tarballs and OCI image layouts.
//!
//! A tar source is read once as a stream (stdin works): files named `blobs/sha256/<hex>` and
//! `*/layer.tar` are copied into the ingest as they pass, other files (`manifest.json`,
//! `index.json`, `repositories`, configs) are kept in memory, and symlinks (which `docker
//! save` uses for repeated layers) are resolved at the end. `manifest.json` marks a `docker
//! save` archive and wins over `index.json`, which newer Docker versions write beside it.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::oci::{self, Descriptor, Index, Manifest, Platform};
use crate::reference::Reference;
use crate::store::{self, ImageRecord, Ingest};
use crate::Images;

/// Largest non-blob file kept in memory while reading an archive.
const MAX_METADATA_BYTES: u64 = 16 << 20;
/// Annotation with the full image name in OCI layouts written by containerd and Docker.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// Annotation with the reference name of an OCI layout entry.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors from reading an archive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the archive failed.
    #[error("failed to read archive")]
    Read(#[source] io::Error),
    /// A file is missing from the archive.
    #[error("archive has no {0}")]
    Missing(String),
    /// Neither `manifest.json` nor `index.json` is present.
    #[error("not a docker save archive or OCI image layout: no manifest.json or index.json")]
    Format,
    /// A metadata file is larger than any real one.
    #[error("archive file {0} is larger than {MAX_METADATA_BYTES} bytes")]
    TooLarge(String),
    /// A JSON document of the archive is invalid.
    #[error("invalid {0} in archive")]
    Json(String, #[source] serde_json::Error),
    /// An OCI index lists no image for this platform.
    #[error("OCI index has no manifest for {wanted}; it has: {available}")]
    Platform { wanted: Platform, available: String },
    /// A blob failed verification or could not be stored.
    #[error("blob {0}")]
    Blob(String, #[source] store::Error),
}

type Result<T> = std::result::Result<T, Error>;

/// Where an archive comes from.
pub enum Source {
    /// A tar file (optionally gzip or zstd compressed) or an OCI layout directory.
    Path(PathBuf),
    /// A tar stream, e.g. stdin.
    Stream(Box<dyn Read>),
}

/// An image that [`load`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    /// The index record.
    pub record: ImageRecord,
    /// The OCI layout's `org.opencontainers.image.ref.name` when it is only a tag (`latest`),
    /// as `skopeo copy … oci:DIR:TAG` and umoci write it, and no `io.containerd.image.name`
    /// gives the full name. A tag names no repository, so the image was stored untagged.
    pub tag_only_ref_name: Option<String>,
}

/// Imports every image of the archive. Returns the stored images in archive order.
pub fn load(images: &Images, source: Source) -> crate::Result<Vec<LoadedImage>> {
    let ingest = images.store().ingest()?;
    let contents = match source {
        Source::Path(path) if path.is_dir() => read_layout_dir(&ingest, &path)?,
        Source::Path(path) => {
            let file = fs::File::open(&path).map_err(Error::Read)?;
            read_tar(&ingest, file)?
        }
        Source::Stream(reader) => read_tar(&ingest, reader)?,
    };

    let imports = if let Some(bytes) = contents.files.get("manifest.json") {
        docker_save_manifests(&ingest, &contents, bytes)?
    } else if let Some(bytes) = contents.files.get("index.json") {
        oci_layout_manifests(&ingest, bytes, &images.registry_options().platform)?
    } else {
        return Err(Error::Format.into());
    };

    let mut loaded = Vec::new();
    for import in imports {
        let record = images.commit_import(&ingest, import.manifest, import.tags, Vec::new())?;
        loaded.push(LoadedImage {
            record,
            tag_only_ref_name: import.tag_only_ref_name,
        });
    }
    Ok(loaded)
}

/// One image of an archive, ready to commit.
struct Import {
    manifest: Digest,
    tags: Vec<String>,
    tag_only_ref_name: Option<String>,
}

/// What a pass over a tar left: small files by name, blob-like files by digest.
#[derive(Default)]
struct Contents {
    files: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Digest>,
    symlinks: HashMap<String, String>,
}

impl Contents {
    /// Returns the digest of the blob stored for archive path `name`, following symlinks.
    fn blob(&self, name: &str) -> Option<Digest> {
        let mut name = clean(name);
        for _ in 0..16 {
            if let Some(digest) = self.blobs.get(&name) {
                return Some(*digest);
            }
            let target = self.symlinks.get(&name)?;
            let base = Path::new(&name).parent().unwrap_or(Path::new(""));
            name = clean(&base.join(target).to_string_lossy());
        }
        None
    }
}

/// Normalises an archive path: no leading `./` or `/`, `..` applied.
fn clean(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn read_tar(ingest: &Ingest, reader: impl Read) -> Result<Contents> {
    let reader = crate::unpack::decompress(reader).map_err(Error::Read)?;
    let mut archive = tar::Archive::new(reader);
    let mut contents = Contents::default();
    for entry in archive.entries().map_err(Error::Read)? {
        let mut entry = entry.map_err(Error::Read)?;
        let name = clean(&String::from_utf8_lossy(&entry.path_bytes()));
        match entry.header().entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default())
                    .into_owned();
                // Hard link names are relative to the archive root, symlinks to their directory.
                let target = if entry.header().entry_type() == tar::EntryType::Link {
                    format!("/{target}")
                } else {
                    target
                };
                contents.symlinks.insert(name, target);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(expected) = blob_name_digest(&name) {
                    let digest = ingest
                        .copy_blob(&mut entry, None)
                        .map_err(|e| Error::Blob(name.clone(), e))?;
                    if digest != expected {
                        let mismatch = store::Error::DigestMismatch {
                            expected,
                            actual: digest,
                        };
                        return Err(Error::Blob(name, mismatch));
                    }
                    contents.blobs.insert(name, digest);
                } else if name.ends_with("/layer.tar") || name.ends_with(".tar") {
                    let digest = ingest
                        .copy_blob(&mut entry, None)
                        .map_err(|e| Error::Blob(name.clone(), e))?;
                    contents.blobs.insert(name, digest);
                } else {
                    if entry.size() > MAX_METADATA_BYTES {
                        return Err(Error::TooLarge(name));
                    }
                    let mut bytes = Vec::new();
                    entry.read_to_end(&mut bytes).map_err(Error::Read)?;
                    contents.files.insert(name, bytes);
                }
            }
            _ => {}
        }
    }
    Ok(contents)
}

/// The digest a `blobs/sha256/<hex>` path names.
fn blob_name_digest(name: &str) -> Option<Digest> {
    let hex = name.strip_prefix("blobs/sha256/")?;
    format!("sha256:{hex}").parse().ok()
}

fn read_layout_dir(ingest: &Ingest, dir: &Path) -> Result<Contents> {
    let mut contents = Contents::default();
    let index_path = dir.join("index.json");
    let bytes = fs::read(&index_path).map_err(|_| Error::Missing("index.json".into()))?;
    contents.files.insert("index.json".into(), bytes);
    // Blobs are copied lazily by oci_layout_manifests through this directory.
    let blobs = dir.join("blobs/sha256");
    for entry in fs::read_dir(&blobs).map_err(Error::Read)? {
        let entry = entry.map_err(Error::Read)?;
        let name = format!("blobs/sha256/{}", entry.file_name().to_string_lossy());
        let Some(expected) = blob_name_digest(&name) else {
            continue;
        };
        let mut file = fs::File::open(entry.path()).map_err(Error::Read)?;
        if !ingest.has_blob(&expected) {
            ingest
                .copy_blob(&mut file, None)
                .and_then(|digest| {
                    if digest == expected {
                        Ok(())
                    } else {
                        Err(store::Error::DigestMismatch {
                            expected,
                            actual: digest,
                        })
                    }
                })
                .map_err(|e| Error::Blob(name.clone(), e))?;
        }
        contents.blobs.insert(name, expected);
    }
    Ok(contents)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Turns each `manifest.json` entry into an OCI manifest blob in the ingest.
fn docker_save_manifests(
    ingest: &Ingest,
    contents: &Contents,
    bytes: &[u8],
) -> Result<Vec<Import>> {
    let entries: Vec<SaveEntry> =
        serde_json::from_slice(bytes).map_err(|e| Error::Json("manifest.json".into(), e))?;
    let mut imports = Vec::new();
    for entry in entries {
        let config_digest = match contents.blob(&entry.config) {
            Some(digest) => digest,
            None => {
                let config = contents
                    .files
                    .get(&clean(&entry.config))
                    .ok_or_else(|| Error::Missing(entry.config.clone()))?;
                ingest
                    .write_blob(config, None)
                    .map_err(|e| Error::Blob(entry.config.clone(), e))?
            }
        };
        let config_size = blob_size(ingest, &config_digest)?;

        let mut layers = Vec::new();
        for layer in &entry.layers {
            let digest = contents
                .blob(layer)
                .ok_or_else(|| Error::Missing(layer.clone()))?;
            layers.push(Descriptor {
                media_type: oci::OCI_LAYER_TAR.to_string(),
                digest,
                size: blob_size(ingest, &digest)?,
                platform: None,
                annotations: Default::default(),
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::OCI_MANIFEST.to_string()),
            config: Descriptor {
                media_type: oci::OCI_CONFIG.to_string(),
                digest: config_digest,
                size: config_size,
                platform: None,
                annotations: Default::default(),
            },
            layers,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let manifest_digest = ingest
            .write_blob(&manifest_bytes, None)
            .map_err(|e| Error::Blob("manifest".into(), e))?;

        let tags = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .filter_map(|tag| tag.parse::<Reference>().ok())
            .map(|r| r.to_string())
            .collect();
        imports.push(Import {
            manifest: manifest_digest,
            tags,
            tag_only_ref_name: None,
        });
    }
    Ok(imports)
}

fn blob_size(ingest: &Ingest, digest: &Digest) -> Result<u64> {
    fs::metadata(ingest.blob_path(digest))
        .map(|m| m.len())
        .map_err(Error::Read)
}

/// Resolves the entries of an OCI `index.json` to image manifests, descending into nested
/// indexes for `platform`. Returns each manifest digest with its tags.
///
/// Each entry takes its name from its `io.containerd.image.name` annotation (Docker and
/// containerd write it) or else from an `org.opencontainers.image.ref.name` that is a full
/// reference. A ref.name
/// that is only a tag stays unused, as Docker leaves it: guessing a repository (podman's
/// `localhost/…`) would invent a name that no registry serves.
fn oci_layout_manifests(ingest: &Ingest, bytes: &[u8], platform: &Platform) -> Result<Vec<Import>> {
    let index: Index =
        serde_json::from_slice(bytes).map_err(|e| Error::Json("index.json".into(), e))?;
    let mut imports = Vec::new();
    for descriptor in &index.manifests {
        let image_name = descriptor.annotations.get(ANNOTATION_IMAGE_NAME);
        let ref_name = descriptor.annotations.get(ANNOTATION_REF_NAME);
        let tag_only_ref_name = ref_name
            .filter(|name| image_name.is_none() && crate::reference::valid_tag(name))
            .cloned();
        let name = image_name
            .or_else(|| ref_name.filter(|_| tag_only_ref_name.is_none()))
            .and_then(|name| name.parse::<Reference>().ok());
        let tags: Vec<String> = name
            .iter()
            .filter(|r| r.tag.is_some())
            .map(|r| r.to_string())
            .collect();

        let manifest = if oci::is_index(&descriptor.media_type) {
            let nested = ingest
                .read_blob(&descriptor.digest)
                .map_err(|e| Error::Blob(descriptor.digest.to_string(), e))?;
            let nested: Index = serde_json::from_slice(&nested)
                .map_err(|e| Error::Json(descriptor.digest.to_string(), e))?;
            crate::registry::select_platform(&nested, platform)
                .map_err(|available| Error::Platform {
                    wanted: platform.clone(),
                    available,
                })?
                .digest
        } else {
            descriptor.digest
        };
        imports.push(Import {
            manifest,
            tags,
            tag_only_ref_name,
        });
    }
    Ok(imports)
}
