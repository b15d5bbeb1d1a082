//! The container's microVM: the writable disk, and the bulkhead-vmm process that boots the
//! guest kernel with the agent initramfs, the image disk (vda, read-only), the writable disk
//! (vdb) and the vsock device.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::container::{Container, ContainerConfig};

/// Default agent initramfs, which `scripts/setup` installs.
const DEFAULT_INITRAMFS: &str = "/usr/local/share/bulkhead/initramfs.cpio.gz";
/// Apparent size of a container's sparse writable disk. Only written blocks take space.
const UPPER_DISK_BYTES: u64 = 8 << 30;
/// Kernel parameters for container guests: a quiet console keeps boot fast, because every
/// console byte is a VM exit.
const GUEST_CMDLINE: &str = "quiet";

/// Finds bulkhead-vmm: `$BULKHEAD_VMM`, else beside this executable, else on `PATH`.
pub fn vmm_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BULKHEAD_VMM") {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("bulkhead-vmm")))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("bulkhead-vmm"))
}

/// Finds the agent initramfs: `$BULKHEAD_INITRAMFS`, else the installed one.
pub fn initramfs() -> Result<PathBuf> {
    let path = std::env::var_os("BULKHEAD_INITRAMFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_INITRAMFS));
    if !path.exists() {
        bail!(
            "the guest agent initramfs {} does not exist; run scripts/setup, or set \
             BULKHEAD_INITRAMFS to one built by guest-agent/build-initramfs",
            path.display()
        );
    }
    Ok(path)
}

/// Creates the container's sparse writable ext4 disk. It has no journal: it lives only as long
/// as the container, and a crash of the VM ends the container anyway.
pub fn create_upper_disk(path: &Path) -> Result<()> {
    let file =
        File::create(path).with_context(|| format!("failed to create {}", path.display()))?;
    file.set_len(UPPER_DISK_BYTES)
        .with_context(|| format!("failed to size {}", path.display()))?;
    drop(file);

    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-m", "0"])
        .args(["-E", "lazy_itable_init=1,nodiscard"])
        .arg(path)
        .output()
        .context("failed to run mkfs.ext4; install e2fsprogs")?;
    if !output.status.success() {
        bail!(
            "mkfs.ext4 failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Starts bulkhead-vmm for `container`. The VM is killed when the calling thread's process
/// ends, so no VM outlives its supervisor.
pub fn spawn(container: &Container, config: &ContainerConfig) -> Result<Child> {
    let initramfs = initramfs()?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(container.vmm_log())
        .with_context(|| format!("failed to open {}", container.vmm_log().display()))?;
    let vmm = vmm_binary();

    let mut command = Command::new(&vmm);
    command
        .arg("--initrd")
        .arg(&initramfs)
        .arg("--cmdline")
        .arg(GUEST_CMDLINE)
        .arg("--cpus")
        .arg(config.cpus.to_string())
        .arg("--memory")
        .arg(config.memory_mib.to_string())
        .arg("--disk")
        .arg(format!("{},ro", config.image_disk))
        .arg("--disk")
        .arg(container.upper_disk())
        .arg("--vsock")
        .arg(container.vsock_path())
        .arg("--console")
        .arg(container.console_log())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: the closure only calls prctl, which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("failed to start {}", vmm.display()))
}

/// Returns the last `max_bytes` of a log file, for error messages.
pub fn log_tail(path: &Path, max_bytes: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        Ok(String::from_utf8_lossy(&tail).trim().to_owned())
    };
    read().unwrap_or_default()
}

/// Removes a file that may not exist.
pub fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
