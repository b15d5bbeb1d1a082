//! [`Images`]: the operations of the CLI and of `bulkhead run` on one state directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::digest::{chain_id, Digest};
use crate::oci::{ImageConfig, Manifest};
use crate::reference::Reference;
use crate::store::{self, ImageRecord, ImageUse, Ingest, Store};
use crate::{archive, registry, rootfs, unpack};

/// Errors from image operations; each variant wraps the module that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The registry client failed (boxed, because its variants are large).
    #[error(transparent)]
    Registry(Box<registry::Error>),
    /// Reading an archive failed.
    #[error(transparent)]
    Archive(#[from] archive::Error),
    /// Applying a layer failed.
    #[error("failed to apply layer {layer} ({index} of {count})")]
    Unpack {
        layer: Digest,
        index: usize,
        count: usize,
        #[source]
        source: unpack::Error,
    },
    /// Building the root disk failed.
    #[error(transparent)]
    Rootfs(#[from] rootfs::Error),
    /// A manifest or config is not valid JSON of the expected shape.
    #[error("invalid {what} {digest}")]
    Json {
        what: &'static str,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    /// The config lists another number of diff ids than the manifest has layers.
    #[error(
        "image config {config} lists {diff_ids} diff ids but the manifest has {layers} layers"
    )]
    LayerCount {
        config: Digest,
        diff_ids: usize,
        layers: usize,
    },
    /// A blob has another size than its descriptor states.
    #[error("blob {digest} has {actual} bytes but its descriptor says {expected}")]
    BlobSize {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    /// A filesystem operation failed.
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<registry::Error> for Error {
    fn from(error: registry::Error) -> Self {
        Error::Registry(Box::new(error))
    }
}

/// Result alias for image operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Container defaults from the `config` object of an image config. Absent fields are `None`
/// or empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImageConfigSummary {
    /// Entrypoint argv.
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments (appended to the entrypoint).
    pub cmd: Option<Vec<String>>,
    /// `NAME=value` strings.
    pub env: Vec<String>,
    /// Working directory; empty means `/`.
    pub working_dir: Option<String>,
    /// User name or `uid[:gid]`; empty means root.
    pub user: Option<String>,
    /// Exposed ports as `PORT/PROTO`, e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// Signal that stops the container, e.g. `SIGTERM`.
    pub stop_signal: Option<String>,
}

/// A resolved image: its index record, parsed config and root disk.
#[derive(Clone, Debug)]
pub struct Image {
    /// The index record (id, names, chain id).
    pub record: ImageRecord,
    /// The parsed image config.
    pub config: ImageConfig,
}

/// Image operations on one state directory.
pub struct Images {
    store: Store,
    registry: registry::Options,
}

impl Images {
    /// Opens the image store under the state directory `root`, with the registry options.
    pub fn open(root: &Path, registry: registry::Options) -> Result<Images> {
        Ok(Images {
            store: Store::open(root)?,
            registry,
        })
    }

    /// Returns the underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Returns the registry options.
    pub fn registry_options(&self) -> &registry::Options {
        &self.registry
    }

    /// Lists the images, most recent first.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let mut images = self.store.images()?;
        images.sort_by(|a, b| b.added.cmp(&a.added).then(a.id.cmp(&b.id)));
        Ok(images)
    }

    /// Finds an image by name, id or id prefix and reads its config.
    pub fn get(&self, name: &str) -> Result<Image> {
        let record = self.store.find(name)?;
        let bytes = self.store.read_blob(&record.id)?;
        let config = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: "image config",
            digest: record.id,
            source,
        })?;
        Ok(Image { record, config })
    }

    /// Returns the container defaults (Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts)
    /// of an image.
    pub fn runtime_config(&self, name: &str) -> Result<ImageConfigSummary> {
        Ok(summarize(&self.get(name)?.config))
    }

    /// Returns the path of the image's ext4 root disk, building it from the stored layers if
    /// the cache lacks it (after `rmi` of another image with the same layers, for example).
    pub fn disk(&self, image: &Image) -> Result<PathBuf> {
        let path = self.store.disk_path(&image.record.chain_id);
        if path.exists() {
            return Ok(path);
        }
        let ingest = self.store.ingest()?;
        let manifest = read_manifest(&ingest, &image.record.manifest)?;
        let (disk, _) = build_disk(&ingest, &manifest, &image.config)?;
        ingest.sync_store()?;
        Ok(ingest.commit_disk(&disk, &image.record.chain_id)?)
    }

    /// Removes an image by name or id, then the blobs and disks no image uses any more.
    /// Returns the `Untagged:` and `Deleted:` lines. The same as [`Images::remove_used`] with
    /// no users and no force.
    pub fn remove(&self, name: &str) -> Result<Vec<String>> {
        self.remove_used(name, false, &[])
    }

    /// Removes an image by name or id unless one of `uses` needs it (see
    /// [`Store::remove_image`]), then collects garbage, keeping what `uses` need.
    pub fn remove_used(&self, name: &str, force: bool, uses: &[ImageUse]) -> Result<Vec<String>> {
        let lines = self.store.remove_image(name, force, uses)?;
        self.store.gc(uses)?;
        Ok(lines)
    }

    /// Removes the blobs, disks and stale ingest directories that no image and none of `uses`
    /// needs. Returns the number of files removed.
    pub fn collect_garbage(&self, uses: &[ImageUse]) -> Result<usize> {
        Ok(self.store.gc(uses)?)
    }

    /// Adds the tag `target` to the image `source` names; see [`Store::tag`].
    pub fn tag(&self, source: &str, target: &Reference) -> Result<()> {
        Ok(self.store.tag(source, target)?)
    }

    /// Pulls an image from its registry.
    pub fn pull(
        &self,
        reference: &Reference,
        progress: &dyn registry::Progress,
    ) -> Result<ImageRecord> {
        registry::pull(self, reference, progress)
    }

    /// Loads the images of a `docker save` tarball or OCI layout (directory, tar or stdin).
    pub fn load(&self, source: archive::Source) -> Result<Vec<archive::LoadedImage>> {
        archive::load(self, source)
    }

    /// Returns the JSON `bulkhead inspect` prints: the record, the config and the layers.
    pub fn inspect(&self, name: &str) -> Result<serde_json::Value> {
        let image = self.get(name)?;
        let config: serde_json::Value =
            serde_json::from_slice(&self.store.read_blob(&image.record.id)?).map_err(|source| {
                Error::Json {
                    what: "image config",
                    digest: image.record.id,
                    source,
                }
            })?;
        let manifest: serde_json::Value = serde_json::from_slice(
            &self.store.read_blob(&image.record.manifest)?,
        )
        .map_err(|source| Error::Json {
            what: "manifest",
            digest: image.record.manifest,
            source,
        })?;
        let disk = self.store.disk_path(&image.record.chain_id);
        Ok(serde_json::json!({
            "Id": image.record.id,
            "RepoTags": image.record.tags,
            "RepoDigests": image.record.repo_digests,
            "Created": image.record.created,
            "Size": image.record.size,
            "Architecture": image.config.architecture,
            "Os": image.config.os,
            "Config": config.get("config").cloned().unwrap_or(serde_json::Value::Null),
            "RootFS": config.get("rootfs").cloned().unwrap_or(serde_json::Value::Null),
            "Layers": manifest.get("layers").cloned().unwrap_or(serde_json::Value::Null),
            "ManifestDigest": image.record.manifest,
            "ChainId": image.record.chain_id,
            "Disk": disk.exists().then(|| disk.display().to_string()),
        }))
    }

    /// Finishes an import whose manifest, config and layer blobs are all in `ingest` or the
    /// store. Building the root disk checks sizes and diff ids (a cached disk is reused).
    /// Then the blobs and the disk move into the store and the image is recorded.
    pub(crate) fn commit_import(
        &self,
        ingest: &Ingest,
        manifest_digest: Digest,
        tags: Vec<String>,
        repo_digests: Vec<String>,
    ) -> Result<ImageRecord> {
        let manifest = read_manifest(ingest, &manifest_digest)?;
        let config_bytes = ingest.read_blob(&manifest.config.digest)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| Error::Json {
                what: "image config",
                digest: manifest.config.digest,
                source,
            })?;
        check_blob_size(ingest, &manifest.config.digest, manifest.config.size)?;
        let chain = chain_id(&config.rootfs.diff_ids);

        // A disk that an image with the same layers already uses is reused. Its layers' diff
        // ids were checked when it was built, so only the blob sizes are checked here.
        let cached_size = self
            .store
            .images()?
            .iter()
            .find(|image| image.chain_id == chain)
            .map(|image| image.size)
            .filter(|_| self.store.disk_path(&chain).exists());
        let (disk, size) = match cached_size {
            Some(size) => {
                for layer in &manifest.layers {
                    check_blob_size(ingest, &layer.digest, layer.size)?;
                }
                (None, size)
            }
            None => {
                let (disk, usage) = build_disk(ingest, &manifest, &config)?;
                (Some(disk), usage.bytes)
            }
        };

        let record = ImageRecord {
            id: manifest.config.digest,
            manifest: manifest_digest,
            tags,
            repo_digests,
            chain_id: chain,
            size,
            created: config.created.clone(),
            added: store::now(),
        };
        self.store.add_image(record.clone(), || {
            if let Some(disk) = &disk {
                ingest.commit_disk(disk, &chain)?;
            }
            for layer in &manifest.layers {
                ingest.commit_blob(&layer.digest)?;
            }
            ingest.commit_blob(&manifest.config.digest)?;
            ingest.commit_blob(&manifest_digest)?;
            ingest.sync_store()
        })?;
        tracing::info!(id = %record.id, tags = ?record.tags, "stored image");
        Ok(record)
    }
}

fn read_manifest(ingest: &Ingest, digest: &Digest) -> Result<Manifest> {
    let bytes = ingest.read_blob(digest)?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: "manifest",
        digest: *digest,
        source,
    })
}

fn check_blob_size(ingest: &Ingest, digest: &Digest, expected: u64) -> Result<()> {
    let path = ingest.blob_path(digest);
    let actual = fs::metadata(&path)
        .map_err(|source| Error::Io {
            op: "stat",
            path: path.clone(),
            source,
        })?
        .len();
    if actual != expected {
        return Err(Error::BlobSize {
            digest: *digest,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Applies the layers of `manifest` in order into a staging tree inside the ingest and
/// builds the disk there. Returns the disk path and the content usage.
fn build_disk(
    ingest: &Ingest,
    manifest: &Manifest,
    config: &ImageConfig,
) -> Result<(PathBuf, rootfs::Usage)> {
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::LayerCount {
            config: manifest.config.digest,
            diff_ids: diff_ids.len(),
            layers: manifest.layers.len(),
        });
    }

    let staging = ingest.dir().join("rootfs");
    let unpack_err = |index: usize, layer: Digest| {
        move |source| Error::Unpack {
            layer,
            index: index + 1,
            count: diff_ids.len(),
            source,
        }
    };
    unpack::create_root(&staging).map_err(unpack_err(0, Digest::of(b"")))?;
    for (index, (layer, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        check_blob_size(ingest, &layer.digest, layer.size)?;
        let path = ingest.blob_path(&layer.digest);
        let file = fs::File::open(&path).map_err(|source| Error::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
        let stats = unpack::apply_layer(&staging, file, Some(diff_id))
            .map_err(unpack_err(index, layer.digest))?;
        tracing::debug!(layer = %layer.digest, entries = stats.entries, bytes = stats.bytes, "applied layer");
    }

    let disk = ingest.dir().join("disk.ext4");
    let usage = rootfs::build(&staging, &disk)?;
    crate::remove::remove_tree(&staging).map_err(|source| Error::Io {
        op: "remove",
        path: staging.clone(),
        source,
    })?;
    Ok((disk, usage))
}

/// Extracts the container defaults from an image config.
pub fn summarize(config: &ImageConfig) -> ImageConfigSummary {
    let runtime = config.config.clone().unwrap_or_default();
    let exposed: BTreeMap<String, serde_json::Value> = runtime.exposed_ports.unwrap_or_default();
    ImageConfigSummary {
        entrypoint: runtime.entrypoint,
        cmd: runtime.cmd,
        env: runtime.env.unwrap_or_default(),
        working_dir: runtime.working_dir.filter(|w| !w.is_empty()),
        user: runtime.user.filter(|u| !u.is_empty()),
        exposed_ports: exposed.into_keys().collect(),
        stop_signal: runtime.stop_signal,
    }
}
