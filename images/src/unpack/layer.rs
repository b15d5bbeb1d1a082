//! Application of the entries of one layer tar.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags, UTIME_OMIT,
};
use tar::{EntryType, Header};

use super::path::{normalize, split};
use super::tree::{is_dir, lstat, proc_path, remove_all, Tree};
use super::{Error, Result};
use crate::digest::Digest;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// What one applied layer contained.
#[derive(Clone, Debug, Default)]
pub struct LayerStats {
    /// Digest of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Entries written (whiteouts excluded).
    pub entries: u64,
    /// Sum of the sizes of the regular files written.
    pub bytes: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest::of(b"")
    }
}

struct Applier {
    tree: Tree,
    /// Paths this layer wrote, which its own whiteouts must not remove.
    written: HashSet<PathBuf>,
    /// Ancestors of `written`, which opaque whiteouts descend into instead of removing.
    ancestors: HashSet<PathBuf>,
    /// Directory mtimes, set after the last entry because later entries change them.
    dir_times: Vec<(PathBuf, i64)>,
    stats: LayerStats,
}

/// Applies the tar stream `reader` to the tree at `root`.
pub(super) fn apply(root: &Path, reader: &mut dyn Read) -> Result<LayerStats> {
    let tree = Tree::open(root).map_err(|e| Error::Root(root.to_path_buf(), e))?;
    let mut applier = Applier {
        tree,
        written: HashSet::new(),
        ancestors: HashSet::new(),
        dir_times: Vec::new(),
        stats: LayerStats::default(),
    };

    let data_end = Cell::new(0);
    let mut stream = CompleteEnd::new(reader, &data_end);
    let mut archive = tar::Archive::new(&mut stream as &mut dyn Read);
    for entry in archive.entries().map_err(Error::Read)? {
        let mut entry = entry.map_err(Error::Read)?;
        data_end.set(entry.raw_file_position() + entry.size());
        applier.entry(&mut entry)?;
    }
    applier.finish_dir_times()?;
    Ok(applier.stats)
}

/// Size of a tar block: headers and the padding of file data are whole blocks.
const BLOCK_SIZE: u64 = 512;

/// A tar stream that tolerates a missing end as Go's `archive/tar` (and so Docker and
/// containerd) does. When the stream ends after the complete data of its last entry, this
/// reader supplies the zero padding of that entry and one zero block, so the tar reader sees a
/// proper end of archive. umoci 0.4.7 `insert` writes layers that end this way, with neither
/// padding nor end blocks.
///
/// A stream that ends at a header boundary needs nothing: the tar reader takes that as the end.
/// A stream cut inside a header or inside file data gets no zeros, so the tar reader still fails.
/// The zeros are added after the diff id hash, which covers only the bytes of the blob.
struct CompleteEnd<'a, R> {
    inner: R,
    /// Bytes read from `inner`.
    position: u64,
    /// Stream offset of the end of the current entry's data, set by the caller for each entry.
    data_end: &'a Cell<u64>,
    /// Zero bytes still to supply, once `inner` ended inside an entry's padding.
    zeros: Option<u64>,
}

impl<'a, R: Read> CompleteEnd<'a, R> {
    fn new(inner: R, data_end: &'a Cell<u64>) -> Self {
        CompleteEnd {
            inner,
            position: 0,
            data_end,
            zeros: None,
        }
    }

    /// Returns how many zeros complete the stream when `inner` ends at `position`.
    fn zeros_at_end(&self) -> u64 {
        let data_end = self.data_end.get();
        let next_header = data_end.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        if self.position >= data_end && self.position < next_header {
            next_header - self.position + BLOCK_SIZE
        } else {
            0
        }
    }
}

impl<R: Read> Read for CompleteEnd<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let zeros = match self.zeros {
            Some(zeros) => zeros,
            None => {
                let count = self.inner.read(buf)?;
                if count > 0 || buf.is_empty() {
                    self.position += count as u64;
                    return Ok(count);
                }
                self.zeros_at_end()
            }
        };
        let count = buf.len().min(usize::try_from(zeros).unwrap_or(usize::MAX));
        buf[..count].fill(0);
        self.zeros = Some(zeros - count as u64);
        Ok(count)
    }
}

/// The metadata of an entry, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Applier {
    fn entry(&mut self, entry: &mut tar::Entry<'_, &mut dyn Read>) -> Result<()> {
        let raw_name = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw_name).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let path = normalize(&raw_name)?;
        let meta = read_meta(entry).map_err(|e| entry_err("read the metadata of", &display, e))?;

        if path.as_os_str().is_empty() {
            // The root itself: only its metadata applies.
            if kind == EntryType::Directory {
                let root = self
                    .tree
                    .root()
                    .try_clone()
                    .map_err(|e| entry_err("open", &display, e))?;
                self.dir_times.push((PathBuf::new(), meta.mtime));
                let dir = rustix::fs::openat(
                    &root,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| entry_err("open", &display, e.into()))?;
                set_fd_meta(&dir, &meta).map_err(|e| entry_err("set metadata of", &display, e))?;
            }
            return Ok(());
        }

        let (parent, name) = split(&path);
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_WHITEOUT.as_bytes() {
            return self
                .opaque(parent)
                .map_err(|e| entry_err("apply opaque whiteout", &display, e));
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let hidden = OsStr::from_bytes(hidden);
            return self
                .whiteout(parent, hidden)
                .map_err(|e| entry_err("apply whiteout", &display, e));
        }

        let dir = self
            .tree
            .dir(parent, true)
            .map_err(|e| entry_err("create parent directories of", &display, e))?
            .expect("dir() with create returns a directory");
        self.note_written(&path);
        self.stats.entries += 1;

        match kind {
            EntryType::Directory => self.directory(&dir, name, &path, &meta),
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                self.regular(&dir, name, entry, size, &meta)
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.replace(&dir, name)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &*dir, name)
                    .map_err(|e| entry_err("create symlink", &display, e.into()))?;
                set_at_meta(&dir, name, &meta, false)
                    .map_err(|e| entry_err("set metadata of", &display, e))
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.hard_link(&dir, &path, &target, &display)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let file_type = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                self.replace(&dir, name)?;
                rustix::fs::mknodat(
                    &*dir,
                    name,
                    file_type,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| entry_err("create device node", &display, e.into()))?;
                set_at_meta(&dir, name, &meta, true)
                    .map_err(|e| entry_err("set metadata of", &display, e))
            }
            other => Err(Error::Unsupported {
                name: display,
                kind: other.as_byte() as char,
            }),
        }
    }

    fn note_written(&mut self, path: &Path) {
        self.written.insert(path.to_path_buf());
        let mut ancestor = path.parent();
        while let Some(dir) = ancestor {
            if !self.ancestors.insert(dir.to_path_buf()) {
                break;
            }
            ancestor = dir.parent();
        }
    }

    /// Removes what is at `name` unless it is a directory and `keep_dir` holds, so the new
    /// entry gets a fresh inode (never writing through a hard link of a lower layer).
    fn remove_existing(&mut self, dir: &OwnedFd, name: &OsStr, keep_dir: bool) -> Result<bool> {
        let display = name.to_string_lossy();
        let Some(stat) = lstat(dir, name).map_err(|e| entry_err("stat", &display, e))? else {
            return Ok(false);
        };
        if keep_dir && is_dir(&stat) {
            return Ok(true);
        }
        if is_dir(&stat) {
            self.tree.invalidate();
        }
        remove_all(dir, name).map_err(|e| entry_err("remove", &display, e))?;
        Ok(false)
    }

    fn replace(&mut self, dir: &OwnedFd, name: &OsStr) -> Result<()> {
        self.remove_existing(dir, name, false).map(|_| ())
    }

    fn directory(&mut self, dir: &OwnedFd, name: &OsStr, path: &Path, meta: &Meta) -> Result<()> {
        let display = path.to_string_lossy();
        if !self.remove_existing(dir, name, true)? {
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
                .map_err(|e| entry_err("create directory", &display, e.into()))?;
        }
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| entry_err("open directory", &display, e.into()))?;
        set_fd_meta(&fd, meta).map_err(|e| entry_err("set metadata of", &display, e))?;
        self.dir_times.push((path.to_path_buf(), meta.mtime));
        Ok(())
    }

    fn regular(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        entry: &mut dyn Read,
        size: u64,
        meta: &Meta,
    ) -> Result<()> {
        let display = name.to_string_lossy();
        let create = || {
            rustix::fs::openat(
                dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        };
        // Most names are new, so the create comes first and only a name that exists (even as
        // a symlink, which O_EXCL does not follow) costs a removal and a second try.
        let fd = match create() {
            Err(rustix::io::Errno::EXIST) => {
                self.replace(dir, name)?;
                create()
            }
            other => other,
        }
        .map_err(|e| entry_err("create", &display, e.into()))?;
        let mut file = std::fs::File::from(fd);
        let written = io::copy(entry, &mut file).map_err(|e| entry_err("write", &display, e))?;
        if written != size {
            return Err(Error::Truncated {
                name: display.into_owned(),
                expected: size,
                actual: written,
            });
        }
        self.stats.bytes += written;
        set_fd_meta(&file, meta).map_err(|e| entry_err("set metadata of", &display, e))
    }

    fn hard_link(
        &mut self,
        dir: &OwnedFd,
        path: &Path,
        target: &[u8],
        display: &str,
    ) -> Result<()> {
        let target_display = String::from_utf8_lossy(target).into_owned();
        let not_found = || Error::LinkTarget {
            name: display.to_string(),
            target: target_display.clone(),
        };
        let target = normalize(target)?;
        if target.as_os_str().is_empty() {
            return Err(not_found());
        }
        // A link to itself would remove its own target first.
        if target == path {
            return Ok(());
        }

        let (target_parent, target_name) = split(&target);
        let target_dir = self
            .tree
            .dir(target_parent, false)
            .map_err(|e| entry_err("open the parent of link target", &target_display, e))?
            .ok_or_else(not_found)?;
        if lstat(&*target_dir, target_name)
            .map_err(|e| entry_err("stat", &target_display, e))?
            .is_none()
        {
            return Err(not_found());
        }

        let (_, name) = split(path);
        self.replace(dir, name)?;
        rustix::fs::linkat(&*target_dir, target_name, dir, name, AtFlags::empty())
            .map_err(|e| entry_err("create hard link", display, e.into()))
    }

    fn whiteout(&mut self, parent: &Path, hidden: &OsStr) -> io::Result<()> {
        // A whiteout hides lower layers only, even when it follows the path in its own layer.
        if self.written.contains(&parent.join(hidden)) {
            return Ok(());
        }
        let Some(dir) = self.tree.dir(parent, false)? else {
            return Ok(());
        };
        self.tree.invalidate();
        remove_all(&*dir, hidden)
    }

    /// Empties `parent` of everything that lower layers put there, keeping what this layer
    /// wrote before the opaque marker.
    fn opaque(&mut self, parent: &Path) -> io::Result<()> {
        let Some(dir) = self.tree.dir(parent, false)? else {
            return Ok(());
        };
        self.tree.invalidate();
        self.clear_lower(&dir, parent)
    }

    fn clear_lower(&self, dir: &OwnedFd, rel: &Path) -> io::Result<()> {
        let listing = rustix::fs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut names = Vec::new();
        for item in rustix::fs::Dir::read_from(&listing)? {
            let item = item?;
            let name = OsStr::from_bytes(item.file_name().to_bytes()).to_os_string();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        for name in names {
            let child = rel.join(&name);
            let Some(stat) = lstat(dir, &name)? else {
                continue;
            };
            if is_dir(&stat) && (self.ancestors.contains(&child) || self.written.contains(&child)) {
                let sub = rustix::fs::openat(
                    dir,
                    &name,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                self.clear_lower(&sub, &child)?;
            } else if !self.written.contains(&child) {
                remove_all(dir, &name)?;
            }
        }
        Ok(())
    }

    fn finish_dir_times(&mut self) -> Result<()> {
        // Deepest first, so setting a child's time does not disturb its parent's afterwards.
        let dir_times = std::mem::take(&mut self.dir_times);
        for (path, mtime) in dir_times.iter().rev() {
            let display = path.to_string_lossy();
            let times = timestamps(*mtime);
            if path.as_os_str().is_empty() {
                rustix::fs::utimensat(self.tree.root(), ".", &times, AtFlags::empty())
                    .map_err(|e| entry_err("set mtime of", &display, e.into()))?;
                continue;
            }
            let (parent, name) = split(path);
            // A later entry or whiteout of this layer may have removed the directory.
            let Some(dir) = self
                .tree
                .dir(parent, false)
                .map_err(|e| entry_err("open", &display, e))?
            else {
                continue;
            };
            match rustix::fs::utimensat(&*dir, name, &times, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(entry_err("set mtime of", &display, e.into())),
            }
        }
        Ok(())
    }
}

fn entry_err(op: &'static str, name: &str, source: io::Error) -> Error {
    Error::Entry {
        op,
        name: name.to_string(),
        source,
    }
}

fn read_meta(entry: &mut tar::Entry<'_, &mut dyn Read>) -> io::Result<Meta> {
    let header: &Header = entry.header();
    let mode = header.mode()? & 0o7777;
    let mut uid = header.uid()? as u32;
    let mut gid = header.gid()? as u32;
    let mut mtime = header.mtime()? as i64;
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            let key = extension.key_bytes();
            let value = extension.value_bytes();
            if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((OsStr::from_bytes(attr).to_os_string(), value.to_vec()));
            } else if key == b"uid" {
                uid = parse_pax_number(value).unwrap_or(uid as i64) as u32;
            } else if key == b"gid" {
                gid = parse_pax_number(value).unwrap_or(gid as i64) as u32;
            } else if key == b"mtime" {
                // NOTE: fractional PAX mtimes are truncated to whole seconds.
                mtime = parse_pax_number(value).unwrap_or(mtime);
            }
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

fn parse_pax_number(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let whole = text.split('.').next()?;
    whole.parse().ok()
}

fn timestamps(mtime: i64) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    }
}

/// Sets owner, mode, xattrs and mtime through an open descriptor. The owner comes first
/// because chown clears the setuid and setgid bits.
fn set_fd_meta(fd: &impl AsFd, meta: &Meta) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    for (name, value) in &meta.xattrs {
        rustix::fs::fsetxattr(fd, name.as_os_str(), value, XattrFlags::empty())?;
    }
    rustix::fs::futimens(fd, &timestamps(meta.mtime))?;
    Ok(())
}

/// Sets metadata of `name` in `dir` without following it; `chmod` only where `set_mode`,
/// because Linux has no mode for symlinks.
fn set_at_meta(dir: &OwnedFd, name: &OsStr, meta: &Meta, set_mode: bool) -> io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if set_mode {
        rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())?;
    }
    for (attr, value) in &meta.xattrs {
        rustix::fs::lsetxattr(
            proc_path(dir, name),
            attr.as_os_str(),
            value,
            XattrFlags::empty(),
        )?;
    }
    rustix::fs::utimensat(
        dir,
        name,
        &timestamps(meta.mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}
