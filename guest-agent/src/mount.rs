//! The file systems that PID 1 mounts inside the container root before entering it.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use thiserror::Error;

use crate::syscall::Syscall;

/// One mount of [`INIT_MOUNTS`].
#[derive(Debug)]
pub struct MountSpec {
    /// Source device or, for a bind mount, a path inside the container root.
    pub source: &'static str,
    /// Mount point inside the container root, created when missing.
    pub target: &'static str,
    /// File system type; `None` for a bind mount.
    pub fstype: Option<&'static str>,
    /// Mount flags.
    pub flags: MsFlags,
    /// File-system-specific options.
    pub data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Mounts performed in order inside the container root.
pub static INIT_MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: Some("proc"),
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: Some("sysfs"),
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: Some("cgroup2"),
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: Some("devtmpfs"),
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    // A private devpts instance; gid 5 is the `tty` group of Debian and busybox images.
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: Some("devpts"),
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    // /dev/ptmx of devtmpfs opens the initial devpts instance, so it is replaced by the
    // instance's own ptmx. A bind mount rather than a symlink leaves the devtmpfs unchanged,
    // which matters when the agent runs on a host whose devtmpfs it shares.
    MountSpec {
        source: "/dev/pts/ptmx",
        target: "/dev/ptmx",
        fstype: None,
        flags: MsFlags::MS_BIND,
        data: None,
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: Some("tmpfs"),
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: Some("tmpfs"),
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: Some("tmpfs"),
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
];

/// A mount that failed.
#[derive(Debug, Error)]
#[error("failed to mount {fstype} on {target}")]
pub struct MountError {
    /// File system type, or `bind`.
    pub fstype: &'static str,
    /// Full path of the mount point.
    pub target: PathBuf,
    /// The errno.
    #[source]
    pub source: io::Error,
}

/// Joins an absolute container path onto `root`.
pub fn in_root(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Performs `mounts` in order inside `root`, creating each mount point first.
///
/// # Errors
/// Stops at the first mount point that cannot be created or mounted.
pub fn mount_all(sys: &dyn Syscall, root: &Path, mounts: &[MountSpec]) -> Result<(), MountError> {
    for spec in mounts {
        let target = in_root(root, spec.target);
        let fail = |source| MountError {
            fstype: spec.fstype.unwrap_or("bind"),
            target: target.clone(),
            source,
        };

        let source = match spec.fstype {
            Some(_) => spec.source.to_owned(),
            None => in_root(root, spec.source).display().to_string(),
        };
        if spec.fstype.is_some() {
            sys.mkdir_all(&target, 0o755).map_err(fail)?;
        }
        sys.mount(Some(&source), &target, spec.fstype, spec.flags, spec.data)
            .map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, Recorder};

    #[test]
    fn mount_all_creates_points_and_mounts_in_order() {
        let sys = Recorder::default();
        mount_all(&sys, Path::new("/new"), INIT_MOUNTS).unwrap();

        let mounts: Vec<(String, String)> = sys
            .calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Mount { source, target, .. } => Some((source.unwrap(), target)),
                _ => None,
            })
            .collect();
        let expected = [
            ("proc", "/new/proc"),
            ("sysfs", "/new/sys"),
            ("cgroup2", "/new/sys/fs/cgroup"),
            ("devtmpfs", "/new/dev"),
            ("devpts", "/new/dev/pts"),
            ("/new/dev/pts/ptmx", "/new/dev/ptmx"),
            ("shm", "/new/dev/shm"),
            ("tmpfs", "/new/run"),
            ("tmpfs", "/new/tmp"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(source, target)| (source.to_string(), target.to_string()))
            .collect();
        assert_eq!(mounts, expected);
        assert_eq!(sys.calls()[0], Call::Mkdir("/new/proc".into()));
    }

    #[test]
    fn mount_all_stops_at_first_failure() {
        let sys = Recorder::default().failing(
            |call| matches!(call, Call::Mount { fstype: Some(fstype), .. } if fstype == "devtmpfs"),
        );
        let err = mount_all(&sys, Path::new("/new"), INIT_MOUNTS).unwrap_err();

        assert_eq!(err.target, PathBuf::from("/new/dev"));
        assert_eq!(err.fstype, "devtmpfs");
        let last = sys.calls().last().cloned().unwrap();
        assert!(matches!(last, Call::Mount { target, .. } if target == "/new/dev"));
    }
}
