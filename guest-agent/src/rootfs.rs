//! The container root: an overlay of the image (lower) and a writable layer (upper), and the
//! switch of the agent's root into it.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use thiserror::Error;

use crate::mount::{mount_all, MountError, INIT_MOUNTS};
use crate::syscall::Syscall;

/// Where the image's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lower {
    /// A read-only ext4 block device, in the VM `/dev/vda`.
    Disk(PathBuf),
    /// A directory, bound read-only (runs outside a VM).
    Directory(PathBuf),
}

/// Where the container's changes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upper {
    /// A writable ext4 block device, in the VM `/dev/vdb`. Changes survive a restart.
    Disk(PathBuf),
    /// A tmpfs; changes are lost at power-off.
    Tmpfs,
}

/// How the agent makes the container root its own root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// pivot_root(2) and a detached unmount of the old root. The kernel rejects pivot_root when
    /// the current root is the initramfs (rootfs), so this is for runs outside the VM.
    PivotRoot,
    /// Move the container root onto `/` and chroot into it, as switch_root(8) does. The
    /// initramfs stays in memory underneath.
    MoveAndChroot,
}

/// Failures of building or entering the container root.
#[derive(Debug, Error)]
pub enum RootfsError {
    /// A mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A directory could not be created.
    #[error("failed to create {path}")]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A step of entering the root failed.
    #[error("failed to {step} into the container root {root}")]
    Switch {
        /// The system call that failed.
        step: &'static str,
        /// The container root.
        root: PathBuf,
        /// The errno.
        #[source]
        source: io::Error,
    },
}

/// Result of this module's operations.
pub type Result<T> = std::result::Result<T, RootfsError>;

fn mount(
    sys: &dyn Syscall,
    source: &str,
    target: &Path,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    let fstype_or_bind = if flags.contains(MsFlags::MS_BIND) {
        None
    } else {
        Some(fstype)
    };
    sys.mkdir_all(target, 0o755)
        .and_then(|()| sys.mount(Some(source), target, fstype_or_bind, flags, data))
        .map_err(|source| {
            RootfsError::Mount(MountError {
                fstype,
                target: target.to_owned(),
                source,
            })
        })
}

fn mkdir(sys: &dyn Syscall, path: PathBuf) -> Result<()> {
    sys.mkdir_all(&path, 0o755)
        .map_err(|source| RootfsError::Mkdir { path, source })
}

/// Mounts the layers under `staging`, overlays them at `staging/root` and performs
/// [`INIT_MOUNTS`] inside it. Returns the container root.
///
/// `staging` must be a directory on a writable file system that no other mount covers later.
///
/// # Errors
/// Fails at the first mount that fails.
pub fn prepare(sys: &dyn Syscall, staging: &Path, lower: &Lower, upper: &Upper) -> Result<PathBuf> {
    let lower_dir = staging.join("lower");
    match lower {
        Lower::Disk(device) => mount(
            sys,
            &device.display().to_string(),
            &lower_dir,
            "ext4",
            MsFlags::MS_RDONLY,
            None,
        )?,
        Lower::Directory(dir) => {
            // A read-only bind needs a second, remounting call: MS_RDONLY is ignored on the first.
            mount(
                sys,
                &dir.display().to_string(),
                &lower_dir,
                "bind",
                MsFlags::MS_BIND,
                None,
            )?;
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(sys, "none", &lower_dir, "bind", flags, None)?;
        }
    }

    let upper_dir = staging.join("upper");
    match upper {
        Upper::Disk(device) => mount(
            sys,
            &device.display().to_string(),
            &upper_dir,
            "ext4",
            MsFlags::empty(),
            None,
        )?,
        Upper::Tmpfs => mount(
            sys,
            "tmpfs",
            &upper_dir,
            "tmpfs",
            MsFlags::empty(),
            Some("mode=0755"),
        )?,
    }
    mkdir(sys, upper_dir.join("upper"))?;
    mkdir(sys, upper_dir.join("work"))?;

    let root = staging.join("root");
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower_dir.display(),
        upper_dir.join("upper").display(),
        upper_dir.join("work").display()
    );
    mount(
        sys,
        "overlay",
        &root,
        "overlay",
        MsFlags::empty(),
        Some(&options),
    )?;

    mount_all(sys, &root, INIT_MOUNTS)?;
    Ok(root)
}

/// Makes `root` the agent's root directory and `/` its working directory.
///
/// # Errors
/// Fails at the first system call that fails; the agent's root is then undefined.
pub fn enter(sys: &dyn Syscall, root: &Path, switch: Switch) -> Result<()> {
    let fail = |step| {
        move |source| RootfsError::Switch {
            step,
            root: root.to_owned(),
            source,
        }
    };

    sys.chdir(root).map_err(fail("chdir"))?;
    match switch {
        Switch::PivotRoot => {
            // With new_root and put_old both ".", the old root ends up stacked on top of the
            // new one, where a lazy unmount removes it without needing a directory for it.
            sys.pivot_root(Path::new("."), Path::new("."))
                .map_err(fail("pivot_root"))?;
            sys.umount(Path::new("."), MntFlags::MNT_DETACH)
                .map_err(fail("unmount the old root"))?;
        }
        Switch::MoveAndChroot => {
            sys.mount(Some("."), Path::new("/"), None, MsFlags::MS_MOVE, None)
                .map_err(fail("move mount"))?;
            sys.chroot(Path::new(".")).map_err(fail("chroot"))?;
        }
    }
    sys.chdir(Path::new("/")).map_err(fail("chdir"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, Recorder};

    fn mounts(sys: &Recorder) -> Vec<(String, Option<String>, Option<String>)> {
        sys.calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Mount {
                    target,
                    fstype,
                    data,
                    ..
                } => Some((target, fstype, data)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn prepare_overlays_disks() {
        let sys = Recorder::default();
        let root = prepare(
            &sys,
            Path::new("/run/bulkhead"),
            &Lower::Disk("/dev/vda".into()),
            &Upper::Disk("/dev/vdb".into()),
        )
        .unwrap();

        assert_eq!(root, PathBuf::from("/run/bulkhead/root"));
        let mounts = mounts(&sys);
        assert_eq!(
            mounts[0],
            ("/run/bulkhead/lower".into(), Some("ext4".into()), None)
        );
        assert_eq!(
            mounts[1],
            ("/run/bulkhead/upper".into(), Some("ext4".into()), None)
        );
        let overlay = "lowerdir=/run/bulkhead/lower,upperdir=/run/bulkhead/upper/upper,\
                       workdir=/run/bulkhead/upper/work";
        assert_eq!(
            mounts[2],
            (
                "/run/bulkhead/root".into(),
                Some("overlay".into()),
                Some(overlay.into())
            )
        );
        assert_eq!(mounts.len(), 3 + INIT_MOUNTS.len());
    }

    #[test]
    fn prepare_binds_directory_read_only_with_tmpfs_upper() {
        let sys = Recorder::default();
        prepare(
            &sys,
            Path::new("/s"),
            &Lower::Directory("/images/busybox".into()),
            &Upper::Tmpfs,
        )
        .unwrap();

        let calls = sys.calls();
        let binds: Vec<&Call> = calls
            .iter()
            .filter(|call| matches!(call, Call::Mount { target, .. } if target == "/s/lower"))
            .collect();
        assert_eq!(binds.len(), 2);
        assert!(
            matches!(binds[1], Call::Mount { flags, .. } if flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT))
        );
        assert!(mounts(&sys).contains(&(
            "/s/upper".into(),
            Some("tmpfs".into()),
            Some("mode=0755".into())
        )));
    }

    #[test]
    fn enter_pivots_and_detaches_old_root() {
        let sys = Recorder::default();
        enter(&sys, Path::new("/s/root"), Switch::PivotRoot).unwrap();
        assert_eq!(
            sys.calls(),
            [
                Call::Chdir("/s/root".into()),
                Call::PivotRoot(".".into(), ".".into()),
                Call::Umount(".".into()),
                Call::Chdir("/".into()),
            ]
        );
    }

    #[test]
    fn enter_moves_and_chroots_from_initramfs() {
        let sys = Recorder::default();
        enter(&sys, Path::new("/s/root"), Switch::MoveAndChroot).unwrap();
        let calls = sys.calls();
        assert_eq!(calls.len(), 4);
        assert!(
            matches!(&calls[1], Call::Mount { source: Some(s), target, flags, .. }
            if s == "." && target == "/" && *flags == MsFlags::MS_MOVE)
        );
        assert_eq!(calls[2], Call::Chroot(".".into()));
    }

    #[test]
    fn enter_reports_failed_step() {
        let sys = Recorder::default().failing(|call| matches!(call, Call::PivotRoot(..)));
        let err = enter(&sys, Path::new("/s/root"), Switch::PivotRoot).unwrap_err();
        assert!(matches!(
            err,
            RootfsError::Switch {
                step: "pivot_root",
                ..
            }
        ));
        assert_eq!(sys.calls().len(), 2);
    }
}
