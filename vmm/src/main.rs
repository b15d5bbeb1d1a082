//! bulkhead-vmm: boots one Linux microVM and exits when the guest ends.
//!
//! Exit status:
//! 0 the guest rebooted or powered off; 1 another VMM failure; 2 invalid command-line usage;
//! 3 no usable KVM; 4 this host's KVM is PVM; 5 the kernel or initramfs is missing or invalid;
//! 6 guest memory is too small for the kernel; 7 a disk image cannot be used;
//! 8 the guest kernel panicked; 9 a vCPU failed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::builder::{self, BuildError, Outcome};
use vmm::config::{self, Console, DiskConfig, VmConfig, VsockConfig};
use vmm::host::KvmError;

/// Exit statuses, documented in the crate header and the README.
mod status {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_KVM: u8 = 3;
    pub const PVM: u8 = 4;
    pub const BAD_KERNEL: u8 = 5;
    pub const MEMORY_TOO_SMALL: u8 = 6;
    pub const BAD_DISK: u8 = 7;
    pub const GUEST_PANIC: u8 = 8;
    pub const VCPU_FAILED: u8 = 9;
}

/// Boots a Linux guest in a KVM microVM with a serial console and virtio-blk disks.
#[derive(Debug, Parser)]
#[command(name = "bulkhead-vmm", version)]
struct Args {
    /// Guest kernel: an x86_64 ELF vmlinux or a bzImage.
    #[arg(long, env = config::KERNEL_ENV, default_value = config::DEFAULT_KERNEL)]
    kernel: PathBuf,

    /// Initramfs (a cpio archive, optionally compressed) loaded beside the kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,

    /// Kernel parameters appended to the built-in ones ("console=ttyS0 reboot=k panic=-1 pci=off");
    /// text after " -- " is passed to init.
    #[arg(long, default_value = "")]
    cmdline: String,

    /// Number of vCPUs, 1 to 32.
    #[arg(long, default_value_t = config::DEFAULT_CPUS)]
    cpus: u8,

    /// Guest memory in MiB.
    #[arg(long, default_value_t = config::DEFAULT_MEMORY_MIB)]
    memory: u64,

    /// Disk image as PATH or PATH,ro; repeat for more disks (vda, vdb, ...).
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<DiskConfig>,

    /// virtio-vsock backed by the host Unix socket PATH (guest cid 3 unless cid=N is given).
    /// Host programs connect to PATH and send "CONNECT <port>\n"; guest connections to host
    /// port P reach the Unix socket PATH_P.
    #[arg(long, value_name = "PATH[,cid=N]")]
    vsock: Option<VsockConfig>,

    /// Where the serial console goes: a file path, or - for standard output.
    #[arg(long, default_value = "-")]
    console: Console,

    /// Log filter for the VMM's own messages, in tracing's EnvFilter syntax.
    #[arg(long, env = "RUST_LOG", default_value = "warn")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        cpus: args.cpus,
        memory_mib: args.memory,
        disks: args.disks,
        vsock: args.vsock,
        console: args.console,
    };

    match builder::run(&config) {
        Ok(Outcome::Clean(exit)) => {
            tracing::info!(?exit, "guest ended");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Panicked) => {
            eprintln!("bulkhead-vmm: the guest kernel panicked; its console output shows why");
            ExitCode::from(status::GUEST_PANIC)
        }
        Ok(Outcome::VcpuFailed { vcpu, reason }) => {
            eprintln!("bulkhead-vmm: vCPU {vcpu} failed: {reason}");
            ExitCode::from(status::VCPU_FAILED)
        }
        Err(error) => {
            eprintln!("bulkhead-vmm: {}", error_chain(&error));
            ExitCode::from(exit_status(&error))
        }
    }
}

/// Joins an error and its causes into one line.
fn error_chain(error: &BuildError) -> String {
    let mut line = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

fn exit_status(error: &BuildError) -> u8 {
    match error {
        BuildError::Kvm(KvmError::Pvm) => status::PVM,
        BuildError::Kvm(_) => status::NO_KVM,
        BuildError::ReadFile { .. } | BuildError::NotAKernel(_) | BuildError::KernelLoad { .. } => {
            status::BAD_KERNEL
        }
        BuildError::MemoryTooSmall { .. } | BuildError::Memory(_) => status::MEMORY_TOO_SMALL,
        BuildError::Disk(_) => status::BAD_DISK,
        BuildError::CpuCount(_) => status::USAGE,
        _ => status::OTHER,
    }
}
