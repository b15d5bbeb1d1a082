//! What the host offers: whether `/dev/kvm` exists, which kind of KVM is behind it, and whether
//! it has the capabilities bulkhead-vmm needs.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};

/// Default path of the KVM device.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";
/// Environment variable that overrides [`DEFAULT_KVM_DEVICE`].
pub const KVM_DEVICE_ENV: &str = "BULKHEAD_KVM_DEVICE";
/// The stable KVM API version, unchanged since Linux 2.6.22.
const KVM_API_VERSION: i32 = 12;

/// The virtualization behind `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Intel VT-x (module kvm_intel).
    IntelVtx,
    /// AMD-V (module kvm_amd).
    AmdV,
    /// PVM (module kvm_pvm): runs only guest kernels built for PVM.
    Pvm,
    /// `/dev/kvm` exists but no known vendor module is loaded.
    Unknown,
}

impl std::fmt::Display for KvmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::IntelVtx => "Intel VT-x (kvm_intel)",
            Self::AmdV => "AMD-V (kvm_amd)",
            Self::Pvm => "PVM (kvm_pvm)",
            Self::Unknown => "unknown",
        })
    }
}

/// Errors that make KVM unusable for bulkhead-vmm.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The device node does not exist.
    #[error(
        "{0} does not exist: this host has no KVM. Load kvm_intel or kvm_amd, or enable nested \
         virtualization for this VM"
    )]
    Missing(PathBuf),
    /// The device exists but this user may not open it.
    #[error(
        "permission denied opening {0}: add this user to the group that owns it (usually kvm)"
    )]
    PermissionDenied(PathBuf),
    /// Opening the device failed for another reason.
    #[error("cannot open {path}")]
    Open {
        /// The device path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The host's KVM is PVM, which cannot run standard guest kernels.
    #[error(
        "this host's KVM is PVM (module kvm_pvm), which runs only PVM-enabled guest kernels; \
         standard guests need a host with Intel VT-x or AMD-V (kvm_intel or kvm_amd)"
    )]
    Pvm,
    /// The kernel speaks another KVM API version.
    #[error("KVM API version {0} is not supported; version {KVM_API_VERSION} is required")]
    ApiVersion(i32),
    /// A capability bulkhead-vmm relies on is missing.
    #[error("KVM lacks the capability {0}, which bulkhead-vmm needs")]
    MissingCapability(&'static str),
}

/// Returns the KVM device path, honouring [`KVM_DEVICE_ENV`].
pub fn kvm_device_path() -> PathBuf {
    std::env::var_os(KVM_DEVICE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KVM_DEVICE))
}

/// Detects which KVM module backs `/dev/kvm` from the modules listed in sysfs. Returns `None`
/// when no KVM module is loaded at all.
pub fn detect_kvm_kind() -> Option<KvmKind> {
    detect_kvm_kind_in(Path::new("/sys/module"))
}

fn detect_kvm_kind_in(modules: &Path) -> Option<KvmKind> {
    // PVM is checked first: a PVM host may also have the kvm module loaded.
    let table = [
        ("kvm_pvm", KvmKind::Pvm),
        ("kvm_intel", KvmKind::IntelVtx),
        ("kvm_amd", KvmKind::AmdV),
    ];
    for (module, kind) in table {
        if modules.join(module).exists() {
            return Some(kind);
        }
    }
    modules.join("kvm").exists().then_some(KvmKind::Unknown)
}

/// Opens KVM and checks that it can run a standard guest with the features bulkhead-vmm uses.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    let path = kvm_device_path();
    if path == Path::new(DEFAULT_KVM_DEVICE) && detect_kvm_kind() == Some(KvmKind::Pvm) {
        return Err(KvmError::Pvm);
    }

    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| KvmError::Open {
        path: path.clone(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let kvm = Kvm::new_with_path(&c_path).map_err(|error| match error.errno() {
        libc::ENOENT => KvmError::Missing(path.clone()),
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied(path.clone()),
        errno => KvmError::Open {
            path: path.clone(),
            source: io::Error::from_raw_os_error(errno),
        },
    })?;

    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(KvmError::ApiVersion(version));
    }
    let required = [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
    ];
    for (cap, name) in required {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCapability(name));
        }
    }
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_kind_from_modules() {
        let cases: [(&[&str], Option<KvmKind>); 5] = [
            (&[], None),
            (&["kvm"], Some(KvmKind::Unknown)),
            (&["kvm", "kvm_intel"], Some(KvmKind::IntelVtx)),
            (&["kvm", "kvm_amd"], Some(KvmKind::AmdV)),
            (&["kvm", "kvm_pvm", "kvm_intel"], Some(KvmKind::Pvm)),
        ];
        for (index, (modules, expected)) in cases.into_iter().enumerate() {
            let root = vmm_sys_util::tempdir::TempDir::new().unwrap();
            for module in modules {
                std::fs::create_dir(root.as_path().join(module)).unwrap();
            }
            assert_eq!(detect_kvm_kind_in(root.as_path()), expected, "case {index}");
        }
    }
}
