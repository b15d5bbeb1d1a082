//! The seam between the agent's logic and the kernel.
//!
//! Every system call that changes the guest's mount table, root or identity, and the file
//! checks that decide how a command is executed, go through [`Syscall`]. [`Linux`] performs them;
//! [`Recorder`] (tests only) records the calls and returns file kinds from a table, so that the
//! mount sequence, root switch and command lookup are testable without privileges.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::mount::{MntFlags, MsFlags};

/// Type of a file, as far as command lookup cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// Any other file; `executable` is true when some execute bit is set.
    File {
        /// Whether any of the owner, group or other execute bits is set.
        executable: bool,
    },
}

/// System calls of the agent. Errors are `io::Error`s carrying the errno.
pub trait Syscall: Send + Sync {
    /// Mounts `source` on `target`, as mount(2).
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;

    /// Unmounts `target`, as umount2(2).
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;

    /// Makes `new_root` the root mount and puts the old root on `put_old`, as pivot_root(2).
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;

    /// Changes the root directory of the agent, as chroot(2).
    fn chroot(&self, path: &Path) -> io::Result<()>;

    /// Changes the working directory of the agent.
    fn chdir(&self, path: &Path) -> io::Result<()>;

    /// Creates a directory and its missing parents with `mode`.
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;

    /// Returns the kind of file at `path`, following symbolic links, or `None` when it is missing.
    fn file_kind(&self, path: &Path) -> Option<FileKind>;

    /// Sets the host name of the UTS namespace.
    fn sethostname(&self, name: &str) -> io::Result<()>;

    /// Brings a network interface up.
    fn set_link_up(&self, name: &str) -> io::Result<()>;

    /// Flushes every file system to its disk.
    fn sync(&self);

    /// Ends the VM. Returns only on failure.
    fn power_off(&self) -> io::Error;
}

/// The DSDT as the kernel loaded it. The file exists only when the ACPI interpreter is running.
const ACPI_DSDT: &str = "/sys/firmware/acpi/tables/DSDT";

/// Whether the kernel can power the VM off, as [`detect_power_off`] found.
static CAN_POWER_OFF: AtomicBool = AtomicBool::new(false);

/// Records whether the kernel can power off: it needs ACPI and an `_S5` object in the DSDT, as
/// bulkhead-vmm provides. Call it while /sys is mounted, because [`Syscall::power_off`] runs
/// after /sys is unmounted.
pub fn detect_power_off() -> bool {
    let s5 = std::fs::read(ACPI_DSDT).is_ok_and(|dsdt| dsdt.windows(4).any(|name| name == b"_S5_"));
    CAN_POWER_OFF.store(s5, Ordering::Relaxed);
    s5
}

/// The real system calls.
pub struct Linux;

impl Syscall for Linux {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(io::Error::from)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(io::Error::from)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        nix::unistd::pivot_root(new_root, put_old).map_err(io::Error::from)
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chroot(path).map_err(io::Error::from)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(io::Error::from)
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn file_kind(&self, path: &Path) -> Option<FileKind> {
        let metadata = std::fs::metadata(path).ok()?;
        if metadata.is_dir() {
            return Some(FileKind::Directory);
        }
        Some(FileKind::File {
            executable: metadata.permissions().mode() & 0o111 != 0,
        })
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io::Error::from)
    }

    fn set_link_up(&self, name: &str) -> io::Result<()> {
        crate::network::set_link_up(name)
    }

    fn sync(&self) {
        nix::unistd::sync();
    }

    fn power_off(&self) -> io::Error {
        // Without ACPI and `_S5` a power-off request halts the vCPUs and the VMM never exits,
        // so reboot instead: bulkhead-vmm also exits on the i8042 reset that reboot=k selects.
        let mode = if CAN_POWER_OFF.load(Ordering::Relaxed) {
            nix::sys::reboot::RebootMode::RB_POWER_OFF
        } else {
            nix::sys::reboot::RebootMode::RB_AUTOBOOT
        };
        match nix::sys::reboot::reboot(mode) {
            Err(errno) => errno.into(),
        }
    }
}

/// A call recorded by [`Recorder`].
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount(String),
    PivotRoot(String, String),
    Chroot(String),
    Chdir(String),
    Mkdir(String),
    Sethostname(String),
    LinkUp(String),
    Sync,
    PowerOff,
}

/// Test double that records calls, fails chosen ones and returns file kinds from a table.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    calls: std::sync::Mutex<Vec<Call>>,
    files: std::collections::HashMap<std::path::PathBuf, FileKind>,
    fail: Option<fn(&Call) -> bool>,
}

#[cfg(test)]
impl Recorder {
    /// Adds a file that [`Syscall::file_kind`] reports.
    pub fn with_file(mut self, path: &str, kind: FileKind) -> Self {
        self.files.insert(path.into(), kind);
        self
    }

    /// Makes every call for which `matches` returns true fail with `EPERM`, after recording it.
    pub fn failing(mut self, matches: fn(&Call) -> bool) -> Self {
        self.fail = Some(matches);
        self
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: Call) -> io::Result<()> {
        let fail = self.fail.is_some_and(|matches| matches(&call));
        self.calls.lock().unwrap().push(call);
        if fail {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
}

#[cfg(test)]
fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
impl Syscall for Recorder {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.record(Call::Mount {
            source: source.map(str::to_owned),
            target: display(target),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        })
    }

    fn umount(&self, target: &Path, _flags: MntFlags) -> io::Result<()> {
        self.record(Call::Umount(display(target)))
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.record(Call::PivotRoot(display(new_root), display(put_old)))
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Chroot(display(path)))
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Chdir(display(path)))
    }

    fn mkdir_all(&self, path: &Path, _mode: u32) -> io::Result<()> {
        self.record(Call::Mkdir(display(path)))
    }

    fn file_kind(&self, path: &Path) -> Option<FileKind> {
        self.files.get(path).copied()
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(Call::Sethostname(name.to_owned()))
    }

    fn set_link_up(&self, name: &str) -> io::Result<()> {
        self.record(Call::LinkUp(name.to_owned()))
    }

    fn sync(&self) {
        let _ = self.record(Call::Sync);
    }

    fn power_off(&self) -> io::Error {
        let _ = self.record(Call::PowerOff);
        io::Error::from_raw_os_error(libc::EPERM)
    }
}
