//! Directory resolution inside the staging root.
//!
//! Every write goes through a descriptor of the entry's parent directory, opened with
//! `openat2(RESOLVE_IN_ROOT)`. Symlinks on the way resolve as if the staging root were `/`,
//! and `..` stops at it. So neither a symlink to `/etc` nor one to `../../..` in a layer can
//! direct a later entry outside. The final component is always handled with `*at` calls that
//! do not follow it.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{openat2, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

pub(super) struct Tree {
    root: OwnedFd,
    /// The last parent directory resolved, because consecutive entries mostly share it.
    cache: Option<(PathBuf, Rc<OwnedFd>)>,
}

const DIR_FLAGS: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);
const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

impl Tree {
    pub(super) fn open(root: &Path) -> io::Result<Tree> {
        let root = rustix::fs::open(root, DIR_FLAGS, Mode::empty())?;
        Ok(Tree { root, cache: None })
    }

    pub(super) fn root(&self) -> &OwnedFd {
        &self.root
    }

    /// Forgets the cached parent; called whenever a directory may have been removed.
    pub(super) fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Opens the directory at `rel` (resolved inside the root). With `create`, missing
    /// components are created with mode 0755 and owner root, as Docker does. Returns `None`
    /// when the directory does not exist and `create` is false.
    pub(super) fn dir(&mut self, rel: &Path, create: bool) -> io::Result<Option<Rc<OwnedFd>>> {
        if let Some((cached, fd)) = &self.cache {
            if cached == rel {
                return Ok(Some(fd.clone()));
            }
        }
        let fd = match self.resolve(rel) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => self.create_dirs(rel)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let fd = Rc::new(fd);
        self.cache = Some((rel.to_path_buf(), fd.clone()));
        Ok(Some(fd))
    }

    fn resolve(&self, rel: &Path) -> io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        Ok(openat2(&self.root, rel, DIR_FLAGS, Mode::empty(), RESOLVE)?)
    }

    fn create_dirs(&self, rel: &Path) -> io::Result<OwnedFd> {
        let mut prefix = PathBuf::new();
        let mut current = self.resolve(Path::new(""))?;
        for component in rel.components() {
            prefix.push(component);
            current = match self.resolve(&prefix) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(
                        &current,
                        component.as_os_str(),
                        Mode::from_raw_mode(0o755),
                    ) {
                        Ok(()) => {}
                        // Something that does not resolve to a directory is in the way, such
                        // as a symlink to a missing path: Docker fails here too.
                        Err(rustix::io::Errno::EXIST) => {
                            return Err(io::Error::new(
                                io::ErrorKind::NotADirectory,
                                format!(
                                    "{} exists but does not resolve to a directory inside the root",
                                    prefix.display()
                                ),
                            ))
                        }
                        Err(e) => return Err(e.into()),
                    }
                    self.resolve(&prefix)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(current)
    }
}

/// `fstatat` without following a final symlink; `None` if nothing is there.
pub(super) fn lstat(dir: &impl AsFd, name: &OsStr) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn is_dir(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

/// Removes `name` in `dir`, recursively if it is a directory, without following symlinks.
pub(super) fn remove_all(dir: &impl AsFd, name: &OsStr) -> io::Result<()> {
    let Some(stat) = lstat(dir, name)? else {
        return Ok(());
    };
    if !is_dir(&stat) {
        return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
    }
    // std's remove_dir_all uses openat and O_NOFOLLOW below the path it gets. The
    // /proc/self/fd link pins the parent to the directory this descriptor refers to.
    std::fs::remove_dir_all(proc_path(dir, name))
}

/// Builds a path to `name` inside the directory open as `dir`, for calls without an `*at`
/// form (lsetxattr, remove_dir_all). The kernel resolves the fd link to that very directory.
pub(super) fn proc_path(dir: &impl AsFd, name: &OsStr) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd())).join(name)
}
