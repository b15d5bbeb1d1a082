//! The configuration of one microVM, as the command line gives it.

use std::path::PathBuf;
use std::str::FromStr;

/// Default vCPU count.
pub const DEFAULT_CPUS: u8 = 1;
/// Default guest memory in MiB: enough for the bulkhead kernel and a small workload.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Default location of the guest kernel that `scripts/setup` installs.
pub const DEFAULT_KERNEL: &str = "/usr/local/share/bulkhead/vmlinux";
/// Environment variable that overrides [`DEFAULT_KERNEL`].
pub const KERNEL_ENV: &str = "BULKHEAD_KERNEL";
/// Kernel parameters always passed to the guest: the serial console, reboot through the
/// keyboard controller (the VMM's exit path), an immediate reboot on panic, and no PCI probing,
/// because the VM has no PCI bus.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off";

/// A disk image attached as a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Path of the raw image file.
    pub path: PathBuf,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// Errors in a `--disk` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskConfigError {
    /// The path part is empty.
    #[error("disk path is empty; use PATH or PATH,ro")]
    EmptyPath,
    /// An option after the path is unknown.
    #[error("unknown disk option {0:?}; the only option is ro")]
    UnknownOption(String),
}

impl FromStr for DiskConfig {
    type Err = DiskConfigError;

    /// Parses `PATH` or `PATH,ro`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut parts = value.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(DiskConfigError::EmptyPath);
        }
        let mut read_only = false;
        for option in parts {
            match option {
                "ro" => read_only = true,
                "rw" => read_only = false,
                other => return Err(DiskConfigError::UnknownOption(other.to_owned())),
            }
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// The vsock device: its host Unix socket and the guest's context id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// Host Unix socket. Guest connections to host port P go to `<path>_<P>`.
    pub path: PathBuf,
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
}

/// Errors in a `--vsock` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VsockConfigError {
    /// The path part is empty.
    #[error("vsock socket path is empty; use PATH or PATH,cid=N")]
    EmptyPath,
    /// The context id is not a number of at least 3.
    #[error("invalid vsock cid {0:?}: use a number of at least 3 (0 to 2 are reserved)")]
    Cid(String),
    /// An option after the path is unknown.
    #[error("unknown vsock option {0:?}; the only option is cid=N")]
    UnknownOption(String),
}

impl FromStr for VsockConfig {
    type Err = VsockConfigError;

    /// Parses `PATH` or `PATH,cid=N`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut parts = value.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(VsockConfigError::EmptyPath);
        }
        let mut guest_cid = crate::devices::virtio::vsock::DEFAULT_GUEST_CID;
        for option in parts {
            let Some(cid) = option.strip_prefix("cid=") else {
                return Err(VsockConfigError::UnknownOption(option.to_owned()));
            };
            guest_cid = cid
                .parse()
                .ok()
                .filter(|cid| *cid >= 3 && *cid < u64::from(u32::MAX))
                .ok_or_else(|| VsockConfigError::Cid(cid.to_owned()))?;
        }
        Ok(Self {
            path: PathBuf::from(path),
            guest_cid,
        })
    }
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// Standard output of the VMM.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
}

impl FromStr for Console {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(match value {
            "-" => Self::Stdout,
            path => Self::File(PathBuf::from(path)),
        })
    }
}

/// Everything needed to build and boot one microVM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest kernel: an ELF vmlinux or a bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel parameters appended to [`BASE_CMDLINE`]; text after ` -- ` goes to init.
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Disks in order: the first is /dev/vda.
    pub disks: Vec<DiskConfig>,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Serial console destination.
    pub console: Console,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_config_parses() {
        let cases = [
            ("a.img", Ok(("a.img", false))),
            ("/x/b.ext4,ro", Ok(("/x/b.ext4", true))),
            ("c,rw", Ok(("c", false))),
            ("", Err(DiskConfigError::EmptyPath)),
            (",ro", Err(DiskConfigError::EmptyPath)),
            (
                "d,readonly",
                Err(DiskConfigError::UnknownOption("readonly".into())),
            ),
        ];
        for (input, expected) in cases {
            let parsed = input.parse::<DiskConfig>();
            let expected = expected.map(|(path, read_only)| DiskConfig {
                path: PathBuf::from(path),
                read_only,
            });
            assert_eq!(parsed, expected, "input {input:?}");
        }
    }

    #[test]
    fn vsock_config_parses() {
        let cases = [
            ("/run/v.sock", Ok(("/run/v.sock", 3))),
            ("v.sock,cid=42", Ok(("v.sock", 42))),
            ("", Err(VsockConfigError::EmptyPath)),
            ("v.sock,cid=2", Err(VsockConfigError::Cid("2".into()))),
            ("v.sock,cid=x", Err(VsockConfigError::Cid("x".into()))),
            (
                "v.sock,port=1",
                Err(VsockConfigError::UnknownOption("port=1".into())),
            ),
        ];
        for (input, expected) in cases {
            let expected = expected.map(|(path, guest_cid)| VsockConfig {
                path: PathBuf::from(path),
                guest_cid,
            });
            assert_eq!(input.parse::<VsockConfig>(), expected, "input {input:?}");
        }
    }

    #[test]
    fn console_dash_is_stdout() {
        assert_eq!("-".parse::<Console>().unwrap(), Console::Stdout);
        assert_eq!(
            "c.log".parse::<Console>().unwrap(),
            Console::File("c.log".into())
        );
    }
}
