//! The content-addressed store under the state directory:
//!
//! ```text
//! blobs/sha256/<hex>     manifests, configs and layers, verified by digest and size
//! images.json            the image index, replaced atomically under images.lock
//! images.lock            flock(2) held while the index is read for change and rewritten
//! rootfs/<chain>.ext4    root disks, keyed by the chain id of the image's layers
//! tmp/<op>/              one ingest directory per running pull or load, locked by that process
//! ```
//!
//! A pull or load writes everything into its own ingest directory first and moves it into place
//! only after every check passed, so a failed or interrupted operation leaves nothing in `blobs/`
//! or `rootfs/`. Blobs and disks are moved in before the index names them, and [`Store::gc`]
//! removes what no image names, so a crash between those steps leaves only garbage that the next
//! `rmi` collects.
//!
//! Containers live outside this crate. The caller passes their [`ImageUse`]s to
//! [`Store::remove_image`] and [`Store::gc`], so an image a container was created from is not
//! deleted unless forced, and the root disk its VM opens stays until the container is gone.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hashing};
use crate::reference::Reference;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Content did not match the digest it was named by.
    #[error("digest mismatch for {expected}: content has digest {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// Content did not have the size its descriptor states.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    /// A blob is missing from the store.
    #[error("blob {0} not found in the store")]
    BlobNotFound(Digest),
    /// The image index is not valid JSON.
    #[error("image index {path} is corrupt")]
    CorruptIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// No image matches the name or id.
    #[error("no such image: {0}")]
    ImageNotFound(String),
    /// An id prefix matches several images.
    #[error("image id prefix {0} is ambiguous: it matches several images")]
    Ambiguous(String),
    /// A tag target carries a digest, which only a registry can assign.
    #[error("invalid tag target {0}: a digest reference cannot be a tag")]
    TagWithDigest(String),
    /// Removing the image would delete it while a container uses it, and the removal was not
    /// forced.
    #[error("image {name} is in use by {user}")]
    InUse {
        /// The name or id the caller asked to remove.
        name: String,
        /// The first user found, as [`ImageUse::user`] names it.
        user: String,
    },
}

/// Result alias for the store.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One image in the index.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// Image id: the digest of the config blob.
    pub id: Digest,
    /// Digest of the platform manifest blob.
    pub manifest: Digest,
    /// Tagged references, e.g. `docker.io/library/busybox:latest`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Digested references, e.g. `docker.io/library/busybox@sha256:…`, where the digest is the
    /// one the registry serves for the reference (an index digest for multi-platform images).
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Chain id of the layers, naming the root disk `rootfs/<hex>.ext4`.
    pub chain_id: Digest,
    /// Apparent size of the unpacked root filesystem in bytes.
    pub size: u64,
    /// Creation time from the image config (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// Unix time when the image entered this store.
    pub added: u64,
}

/// One user of an image outside the store, such as a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUse {
    /// Name of the user for messages, e.g. a container's short id.
    pub user: String,
    /// Id of the image the user was created from, or `None` when its record has no valid id.
    pub image_id: Option<Digest>,
    /// The root disk the user opens, normally `rootfs/<chain>.ext4` of this store.
    pub disk: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    images: Vec<ImageRecord>,
}

/// The store rooted at the state directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store at `root`, creating its directories.
    pub fn open(root: &Path) -> Result<Store> {
        for dir in ["blobs/sha256", "rootfs", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err("create directory", &path))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a blob in the store (which may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Returns whether the store holds a blob.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).exists()
    }

    /// Path of the root disk for a chain id (which may not exist).
    pub fn disk_path(&self, chain_id: &Digest) -> PathBuf {
        self.root
            .join("rootfs")
            .join(format!("{}.ext4", chain_id.hex()))
    }

    /// Reads a small blob (manifest or config) and checks its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        read_verified(&self.blob_path(digest), digest)
    }

    /// Starts an ingest: a private directory for one pull or load.
    pub fn ingest(&self) -> Result<Ingest> {
        Ingest::create(self)
    }

    /// Lists the images in the index.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.read_index()?.images)
    }

    /// Finds an image by reference (`busybox`, `busybox:1`, `name@sha256:…`), by full id
    /// (`sha256:…`) or by a unique id prefix of at least 4 hex digits.
    pub fn find(&self, name: &str) -> Result<ImageRecord> {
        let images = self.images()?;
        find_in(&images, name).cloned()
    }

    /// Runs `move_files` (which moves an ingest's blobs and disk into the store) and then adds
    /// `record` to the index, both under the index lock. So [`Store::gc`], which takes the same
    /// lock, never sees the moved files before the index names them.
    ///
    /// The record is merged into an existing one with the same id. A tag that named another
    /// image moves to this one. An image left without names stays listed as `<none>` until
    /// `rmi` removes it.
    pub fn add_image(
        &self,
        record: ImageRecord,
        move_files: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let _lock = self.lock()?;
        move_files()?;
        self.update_index_locked(|index| {
            for other in index
                .images
                .iter_mut()
                .filter(|other| other.id != record.id)
            {
                other.tags.retain(|tag| !record.tags.contains(tag));
            }
            match index.images.iter_mut().find(|image| image.id == record.id) {
                Some(existing) => {
                    for tag in &record.tags {
                        if !existing.tags.contains(tag) {
                            existing.tags.push(tag.clone());
                        }
                    }
                    for digest in &record.repo_digests {
                        if !existing.repo_digests.contains(digest) {
                            existing.repo_digests.push(digest.clone());
                        }
                    }
                }
                None => index.images.push(record.clone()),
            }
            Ok(())
        })
    }

    /// Adds the tag `target` to the image that `source` names (a reference, id or id prefix),
    /// as `docker tag` does. The tag moves from any image that had it, which may leave that
    /// image untagged. The index is rewritten atomically under the lock.
    pub fn tag(&self, source: &str, target: &Reference) -> Result<()> {
        if target.digest.is_some() {
            return Err(Error::TagWithDigest(target.to_string()));
        }
        let target = target.to_string();
        self.update_index(|index| {
            let id = find_in(&index.images, source)?.id;
            for image in &mut index.images {
                if image.id == id {
                    if !image.tags.contains(&target) {
                        image.tags.push(target.clone());
                    }
                } else {
                    image.tags.retain(|t| *t != target);
                }
            }
            Ok(())
        })
    }

    /// Removes one name of an image, or the whole image when `name` is an id or its last tag.
    /// Returns the lines `docker rmi` prints (`Untagged: …`, `Deleted: …`).
    ///
    /// Deleting an image that one of `uses` was created from fails with [`Error::InUse`]
    /// unless `force` is set. Removing one of several tags never conflicts. A forced removal
    /// deletes the index record, and [`Store::gc`] keeps the users' disks and config blobs.
    pub fn remove_image(&self, name: &str, force: bool, uses: &[ImageUse]) -> Result<Vec<String>> {
        let mut output = Vec::new();
        self.update_index(|index| {
            let found = find_in(&index.images, name)?.clone();
            let position = index.images.iter().position(|image| image.id == found.id);
            let position = position.expect("find_in returned an image of this index");

            let tag = name.parse::<Reference>().ok().map(|r| r.to_string());
            let by_tag = tag.as_ref().filter(|tag| found.tags.contains(tag));
            let untags_only = by_tag.is_some() && found.tags.len() > 1;
            if !untags_only && !force {
                let user = uses.iter().find(|u| u.image_id == Some(found.id));
                if let Some(user) = user {
                    return Err(Error::InUse {
                        name: name.to_string(),
                        user: user.user.clone(),
                    });
                }
            }

            let image = &mut index.images[position];
            if let Some(tag) = by_tag {
                image.tags.retain(|t| t != tag);
                output.push(format!("Untagged: {tag}"));
                if !image.tags.is_empty() {
                    return Ok(());
                }
            } else {
                for tag in image.tags.drain(..) {
                    output.push(format!("Untagged: {tag}"));
                }
            }
            for digest in &image.repo_digests {
                output.push(format!("Untagged: {digest}"));
            }
            output.push(format!("Deleted: {}", image.id));
            index.images.remove(position);
            Ok(())
        })?;
        Ok(output)
    }

    /// Removes blobs, disks and ingest directories that no image, no user in `uses` and no
    /// running operation needs. A user keeps its root disk and the config blob of its image.
    /// Returns the number of files removed.
    pub fn gc(&self, uses: &[ImageUse]) -> Result<usize> {
        let _lock = self.lock()?;
        let images = self.read_index()?.images;

        let mut blobs = HashSet::new();
        let mut disks = HashSet::new();
        for image in &images {
            blobs.insert(image.manifest.hex());
            blobs.insert(image.id.hex());
            disks.insert(format!("{}.ext4", image.chain_id.hex()));
            // The layers are named only by the manifest; a missing or corrupt manifest keeps
            // nothing else alive, and the next pull of the image fetches it again.
            if let Ok(bytes) = self.read_blob(&image.manifest) {
                if let Ok(manifest) = serde_json::from_slice::<crate::oci::Manifest>(&bytes) {
                    blobs.extend(manifest.layers.iter().map(|layer| layer.digest.hex()));
                }
            }
        }
        for user in uses {
            blobs.extend(user.image_id.map(|id| id.hex()));
            if let Some(name) = user.disk.file_name() {
                disks.insert(name.to_string_lossy().into_owned());
            }
        }

        let mut removed = 0;
        removed += remove_unlisted(&self.root.join("blobs/sha256"), &blobs)?;
        removed += remove_unlisted(&self.root.join("rootfs"), &disks)?;
        removed += self.remove_stale_ingests()?;
        Ok(removed)
    }

    fn remove_stale_ingests(&self) -> Result<usize> {
        let tmp = self.root.join("tmp");
        let mut removed = 0;
        for entry in fs::read_dir(&tmp).map_err(io_err("read directory", &tmp))? {
            let entry = entry.map_err(io_err("read directory", &tmp))?;
            let lock_path = entry.path().join("lock");
            // An ingest whose lock can be taken belongs to no running process.
            let stale = match File::open(&lock_path) {
                Ok(file) => flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok(),
                Err(_) => true,
            };
            if stale {
                let path = entry.path();
                crate::remove::remove_tree(&path).map_err(io_err("remove", &path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn lock(&self) -> Result<File> {
        let path = self.root.join("images.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| Error::Io {
            op: "lock",
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(file)
    }

    fn read_index(&self) -> Result<IndexFile> {
        let path = self.root.join("images.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::CorruptIndex {
                path: path.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn update_index(&self, change: impl FnOnce(&mut IndexFile) -> Result<()>) -> Result<()> {
        let _lock = self.lock()?;
        self.update_index_locked(change)
    }

    /// Rewrites the index; the caller holds the lock.
    fn update_index_locked(&self, change: impl FnOnce(&mut IndexFile) -> Result<()>) -> Result<()> {
        let mut index = self.read_index()?;
        change(&mut index)?;
        let bytes = serde_json::to_vec_pretty(&index).expect("the index serialises");
        write_atomic(&self.root.join("images.json"), &bytes)
    }
}

fn find_in<'a>(images: &'a [ImageRecord], name: &str) -> Result<&'a ImageRecord> {
    let id_hex = name.strip_prefix("sha256:").unwrap_or(name);
    let is_hex = id_hex.len() >= 4 && id_hex.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        let matches: Vec<_> = images
            .iter()
            .filter(|i| i.id.hex().starts_with(id_hex))
            .collect();
        match matches.as_slice() {
            [one] => return Ok(one),
            [] => {}
            _ => return Err(Error::Ambiguous(name.to_string())),
        }
    }
    if let Ok(reference) = name.parse::<Reference>() {
        let found = match reference.digest {
            Some(digest) => {
                let wanted = format!("{}@{}", reference.name(), digest);
                images
                    .iter()
                    .find(|i| i.repo_digests.contains(&wanted) || i.manifest == digest)
            }
            None => {
                let wanted = reference.to_string();
                images.iter().find(|i| i.tags.contains(&wanted))
            }
        };
        if let Some(found) = found {
            return Ok(found);
        }
    }
    Err(Error::ImageNotFound(name.to_string()))
}

fn remove_unlisted(dir: &Path, keep: &HashSet<String>) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Reads a whole file and checks that it has `digest`.
pub(crate) fn read_verified(path: &Path, digest: &Digest) -> Result<Vec<u8>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::BlobNotFound(*digest)),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let actual = Digest::of(&bytes);
    if actual != *digest {
        return Err(Error::DigestMismatch {
            expected: *digest,
            actual,
        });
    }
    Ok(bytes)
}

/// Writes `bytes` to a temporary file beside `path`, fsyncs it, renames it over `path` and
/// fsyncs the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a file path has a parent");
    let mut file =
        tempfile::NamedTempFile::new_in(dir).map_err(io_err("create temporary file in", dir))?;
    file.write_all(bytes)
        .map_err(io_err("write", file.path()))?;
    file.as_file().sync_all().map_err(io_err("fsync", path))?;
    file.persist(path).map_err(|e| Error::Io {
        op: "rename onto",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// A private directory for one pull or load. Blobs land here first; [`Ingest::commit_blob`]
/// and [`Ingest::commit_disk`] move them into the store. Dropping the ingest removes the
/// directory with whatever was not committed.
pub struct Ingest {
    store: Store,
    dir: PathBuf,
    _lock: File,
}

impl Ingest {
    fn create(store: &Store) -> Result<Ingest> {
        let tmp = store.root.join("tmp");
        let dir = tempfile::Builder::new()
            .prefix("ingest-")
            .tempdir_in(&tmp)
            .map_err(io_err("create directory in", &tmp))?
            .keep();
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(io_err("create", &lock_path))?;
        flock(&lock, FlockOperation::LockExclusive).map_err(|e| Error::Io {
            op: "lock",
            path: lock_path.clone(),
            source: e.into(),
        })?;
        fs::create_dir(dir.join("blobs")).map_err(io_err("create directory", &dir))?;
        Ok(Ingest {
            store: store.clone(),
            dir,
            _lock: lock,
        })
    }

    /// The ingest directory, for scratch files such as the staging tree.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store this ingest commits into.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where a blob is: in this ingest if it was written here, else in the store.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let local = self.dir.join("blobs").join(digest.hex());
        if local.exists() {
            local
        } else {
            self.store.blob_path(digest)
        }
    }

    /// Returns whether the blob is present here or in the store.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).exists()
    }

    /// Reads a small blob and checks its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        read_verified(&self.blob_path(digest), digest)
    }

    /// Stores `bytes` as a blob, checking them against `expected` if given.
    pub fn write_blob(&self, bytes: &[u8], expected: Option<(&Digest, u64)>) -> Result<Digest> {
        let mut writer = self.blob_writer()?;
        writer
            .write_all(bytes)
            .map_err(io_err("write", &self.dir))?;
        writer.finish(expected)
    }

    /// Copies a blob from a reader, checking it against `expected` if given.
    pub fn copy_blob(
        &self,
        reader: &mut dyn Read,
        expected: Option<(&Digest, u64)>,
    ) -> Result<Digest> {
        let mut writer = self.blob_writer()?;
        io::copy(reader, &mut writer).map_err(io_err("copy blob into", &self.dir))?;
        writer.finish(expected)
    }

    /// Opens a writer for a blob whose digest is known only at the end.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let file = tempfile::NamedTempFile::new_in(&self.dir)
            .map_err(io_err("create temporary file in", &self.dir))?;
        Ok(BlobWriter {
            hashing: Hashing::new(io::BufWriter::new(file)),
            blobs: self.dir.join("blobs"),
        })
    }

    /// Names a fully written and verified file in the ingest by its digest.
    pub fn adopt_blob(&self, path: &Path, digest: &Digest) -> Result<()> {
        let target = self.dir.join("blobs").join(digest.hex());
        fs::rename(path, &target).map_err(io_err("rename into ingest", &target))
    }

    /// Moves a verified blob from this ingest into the store. Blobs already in the store stay.
    pub fn commit_blob(&self, digest: &Digest) -> Result<()> {
        let local = self.dir.join("blobs").join(digest.hex());
        if !local.exists() {
            return Ok(());
        }
        let target = self.store.blob_path(digest);
        fs::rename(&local, &target).map_err(io_err("move blob into store", &target))?;
        Ok(())
    }

    /// Moves a built disk into `rootfs/`.
    pub fn commit_disk(&self, disk: &Path, chain_id: &Digest) -> Result<PathBuf> {
        let target = self.store.disk_path(chain_id);
        fs::rename(disk, &target).map_err(io_err("move disk into store", &target))?;
        Ok(target)
    }

    /// Fsyncs the store directories after commits, so the index never names a lost file.
    pub fn sync_store(&self) -> Result<()> {
        sync_dir(&self.store.root.join("blobs/sha256"))?;
        sync_dir(&self.store.root.join("rootfs"))
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Err(error) = crate::remove::remove_tree(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %error, "failed to remove ingest directory");
        }
    }
}

/// A blob being written into an ingest.
pub struct BlobWriter {
    hashing: Hashing<io::BufWriter<tempfile::NamedTempFile>>,
    blobs: PathBuf,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.hashing.count()
    }

    /// Verifies the content against `expected` (digest and size) if given, fsyncs it and
    /// names it by its digest in the ingest.
    pub fn finish(self, expected: Option<(&Digest, u64)>) -> Result<Digest> {
        let (writer, digest, size) = self.hashing.finish();
        if let Some((expected_digest, expected_size)) = expected {
            if size != expected_size {
                return Err(Error::SizeMismatch {
                    digest: *expected_digest,
                    expected: expected_size,
                    actual: size,
                });
            }
            if digest != *expected_digest {
                return Err(Error::DigestMismatch {
                    expected: *expected_digest,
                    actual: digest,
                });
            }
        }
        let file = writer.into_inner().map_err(|e| Error::Io {
            op: "write",
            path: self.blobs.clone(),
            source: e.into_error(),
        })?;
        file.as_file()
            .sync_all()
            .map_err(io_err("fsync", file.path()))?;
        let target = self.blobs.join(digest.hex());
        file.persist(&target).map_err(|e| Error::Io {
            op: "rename onto",
            path: target.clone(),
            source: e.error,
        })?;
        Ok(digest)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hashing.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.hashing.flush()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seed: &str, tags: &[&str]) -> ImageRecord {
        ImageRecord {
            id: Digest::of(seed.as_bytes()),
            manifest: Digest::of(format!("manifest {seed}").as_bytes()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: Vec::new(),
            chain_id: Digest::of(format!("chain {seed}").as_bytes()),
            size: 0,
            created: None,
            added: 0,
        }
    }

    fn store_with(records: &[ImageRecord]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for record in records {
            store.add_image(record.clone(), || Ok(())).unwrap();
        }
        (dir, store)
    }

    fn tags_of(store: &Store, id: &Digest) -> Vec<String> {
        let images = store.images().unwrap();
        images.iter().find(|i| i.id == *id).unwrap().tags.clone()
    }

    #[test]
    fn tag_moves_from_other_image() {
        let a = record("a", &["docker.io/library/a:1"]);
        let b = record("b", &["docker.io/library/b:1"]);
        let (_dir, store) = store_with(&[a.clone(), b.clone()]);

        store.tag("a:1", &"b:1".parse().unwrap()).unwrap();
        assert_eq!(
            tags_of(&store, &a.id),
            ["docker.io/library/a:1", "docker.io/library/b:1"]
        );
        assert!(tags_of(&store, &b.id).is_empty());

        // Tagging again with a tag the image has changes nothing.
        store
            .tag(&a.id.to_string(), &"a:1".parse().unwrap())
            .unwrap();
        assert_eq!(tags_of(&store, &a.id).len(), 2);
    }

    #[test]
    fn tag_rejects_digest_target() {
        let a = record("a", &["docker.io/library/a:1"]);
        let (_dir, store) = store_with(std::slice::from_ref(&a));
        let target = format!("a@{}", a.manifest).parse().unwrap();
        let error = store.tag("a:1", &target).unwrap_err();
        assert!(matches!(error, Error::TagWithDigest(_)), "{error:?}");
    }

    #[test]
    fn remove_respects_uses() {
        let tags = ["docker.io/library/a:1", "docker.io/library/a:2"];
        // (name, force, expected removed lines or None for a conflict)
        let cases: [(&str, bool, Option<usize>); 4] = [
            ("a:1", false, Some(1)),
            ("a:1", true, Some(1)),
            ("sha256:", false, None),
            ("sha256:", true, Some(3)),
        ];
        for (i, (name, force, lines)) in cases.into_iter().enumerate() {
            let a = record("a", &tags);
            let (_dir, store) = store_with(std::slice::from_ref(&a));
            let name = if name == "sha256:" {
                a.id.to_string()
            } else {
                name.to_string()
            };
            let uses = [ImageUse {
                user: "c1".into(),
                image_id: Some(a.id),
                disk: store.disk_path(&a.chain_id),
            }];

            let result = store.remove_image(&name, force, &uses);
            match lines {
                Some(count) => assert_eq!(result.unwrap().len(), count, "case {i}"),
                None => {
                    let error = result.unwrap_err();
                    assert!(
                        matches!(&error, Error::InUse { user, .. } if user == "c1"),
                        "case {i}: {error:?}"
                    );
                    assert_eq!(tags_of(&store, &a.id), tags, "case {i}");
                }
            }
        }
    }

    #[test]
    fn gc_keeps_what_users_need() {
        let (dir, store) = store_with(&[]);
        let id = Digest::of(b"config");
        let disk = store.disk_path(&Digest::of(b"chain"));
        let other_disk = store.disk_path(&Digest::of(b"other chain"));
        for path in [store.blob_path(&id), disk.clone(), other_disk.clone()] {
            fs::write(&path, b"x").unwrap();
        }
        let uses = [ImageUse {
            user: "c1".into(),
            image_id: Some(id),
            disk: disk.clone(),
        }];

        assert_eq!(store.gc(&uses).unwrap(), 1);
        assert!(store.blob_path(&id).exists());
        assert!(disk.exists());
        assert!(!other_disk.exists());

        assert_eq!(store.gc(&[]).unwrap(), 2);
        assert!(fs::read_dir(dir.path().join("rootfs"))
            .unwrap()
            .next()
            .is_none());
    }
}
