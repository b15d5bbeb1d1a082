//! Builds a microVM from a [`VmConfig`] and runs it until the guest ends.
//!
//! The recipe: open KVM, create the VM and its interrupt controllers, map guest memory, load the
//! kernel and initramfs, write the boot structures, attach devices, create the vCPUs, start them,
//! and wait for the first exit.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::boot::{self, InitrdRegion, ZeroPageConfig};
use crate::arch::x86_64::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, KVM_IDENTITY_MAP_START, KVM_TSS_START,
    MMIO_GAP_START, SERIAL_GSI, VIRTIO_GSIS, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use crate::arch::x86_64::{acpi, cpuid, mptable, regs};
use crate::config::{Console, VmConfig, BASE_CMDLINE};
use crate::devices::acpi::{AcpiPm, ACPI_PM_PORT, ACPI_PM_WINDOW_SIZE};
use crate::devices::bus::{Bus, BusError};
use crate::devices::i8042::{I8042, I8042_DATA_PORT, I8042_WINDOW_SIZE};
use crate::devices::serial::{ConsoleOutput, SerialConsole, COM1_PORT, UART_WINDOW_SIZE};
use crate::devices::virtio::block::{Block, Disk, DiskError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::Interrupt;
use crate::exit::{ExitSignal, VmExit};
use crate::host::{self, KvmError};
use crate::memory::{self, MemoryError};
use crate::vcpu::{Buses, Vcpu};

/// Memory the kernel needs beyond its loaded image for early allocations, page tables and the
/// decompressed initramfs. An estimate: the bulkhead kernel boots in 64 MiB.
const KERNEL_HEADROOM: u64 = 16 << 20;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Errors while building or running a microVM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// KVM is unusable on this host.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A KVM VM ioctl failed.
    #[error("KVM_{ioctl} failed")]
    VmIoctl {
        /// The ioctl, without its KVM_ prefix.
        ioctl: &'static str,
        /// The kernel's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The vCPU count is out of range.
    #[error("{0} vCPUs requested; use 1 to {max}", max = mptable::MAX_CPUS)]
    CpuCount(u8),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel or initramfs file could not be read.
    #[error("cannot read {what} {path}")]
    ReadFile {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is neither an ELF vmlinux nor a bzImage.
    #[error("{0} is not a Linux kernel: expected an x86_64 ELF vmlinux or a bzImage")]
    NotAKernel(PathBuf),
    /// The kernel is in a known format but could not be loaded.
    #[error("cannot load kernel {path}")]
    KernelLoad {
        /// The kernel file.
        path: PathBuf,
        /// The loader's error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// Guest memory cannot hold the kernel and initramfs.
    #[error(
        "guest memory of {memory_mib} MiB is too small for {path}, which needs at least \
         {needed_mib} MiB; raise --memory"
    )]
    MemoryTooSmall {
        /// Configured guest memory.
        memory_mib: u64,
        /// Minimum that would fit.
        needed_mib: u64,
        /// The kernel or initramfs that did not fit.
        path: PathBuf,
    },
    /// The kernel command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing boot structures into guest memory failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Writing the MP table failed.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// Writing the ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// Setting up vCPU registers failed.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// A disk image could not be opened.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// More virtio devices than free interrupt lines.
    #[error("{0} virtio devices requested, but at most {max} fit", max = VIRTIO_GSIS.len())]
    TooManyDevices(usize),
    /// The vsock device could not be created.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A device window overlaps another.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The console file could not be created.
    #[error("cannot create console file {path}")]
    Console {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Creating an eventfd or a thread failed.
    #[error("failed to create {0}")]
    Resource(&'static str, #[source] std::io::Error),
}

/// Result alias for building and running a VM.
pub type Result<T> = std::result::Result<T, BuildError>;

fn vm_ioctl(ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::VmIoctl { ioctl, source }
}

/// How a guest ended, as the VMM reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest rebooted or powered off on request.
    Clean(VmExit),
    /// The guest kernel panicked.
    Panicked,
    /// A vCPU failed.
    VcpuFailed {
        /// Index of the vCPU.
        vcpu: u8,
        /// What failed.
        reason: String,
    },
}

/// Builds the VM described by `config`, runs it, and returns how the guest ended.
pub fn run(config: &VmConfig) -> Result<Outcome> {
    if config.cpus == 0 || config.cpus > mptable::MAX_CPUS {
        return Err(BuildError::CpuCount(config.cpus));
    }
    let devices = config.disks.len() + usize::from(config.vsock.is_some());
    if devices > VIRTIO_GSIS.len() {
        return Err(BuildError::TooManyDevices(devices));
    }

    // 1. KVM and the VM with its in-kernel interrupt controllers and timer.
    let kvm = host::open_kvm()?;
    let vm = create_vm(&kvm)?;

    // 2. Guest memory, registered with KVM.
    let memory = memory::create_guest_memory(config.memory_mib << 20)?;
    register_memory(&vm, &memory)?;

    // 3. Kernel, initramfs and the command line, with the devices announced on it.
    let kernel = load_kernel(&memory, config)?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|path| load_initrd(&memory, path, kernel.end, config.memory_mib))
        .transpose()?;

    // 4. Devices: the console, the reset-only keyboard controller, the ACPI power registers, one
    //    virtio-blk per disk and
    //    the vsock device.
    let exit = Arc::new(ExitSignal::new().map_err(|e| BuildError::Resource("an eventfd", e))?);
    let panicked = Arc::new(AtomicBool::new(false));
    let mut cmdline = kernel_cmdline(&config.cmdline)?;
    let (buses, console) = create_devices(&vm, &memory, config, &exit, &panicked, &mut cmdline)?;
    let cmdline_size = write_cmdline(&memory, &cmdline)?;

    // 5. Boot structures: page tables and GDT, the MP and ACPI tables, and the zero page.
    regs::write_boot_tables(&memory)?;
    mptable::write(&memory, config.cpus)?;
    let acpi_rsdp = acpi::write(&memory, config.cpus)?;
    let zero_page = ZeroPageConfig {
        setup_header: kernel.setup_header,
        cmdline_size,
        initrd,
        acpi_rsdp: Some(acpi_rsdp),
    };
    boot::write_zero_page(&memory, &zero_page)?;

    // 6. vCPUs, each with CPUID and the 64-bit boot state, then started.
    let buses = Arc::new(buses);
    let vcpus = create_vcpus(&kvm, &vm, config.cpus, kernel.entry, &buses, &exit)?;
    for vcpu in vcpus {
        vcpu.spawn()
            .map_err(|e| BuildError::Resource("a vCPU thread", e))?;
    }
    tracing::info!(
        cpus = config.cpus,
        memory_mib = config.memory_mib,
        "guest started"
    );

    // 7. Wait for the first exit. vCPU threads still in KVM_RUN end with the process.
    let vm_exit = exit.wait();
    console.lock().unwrap_or_else(|e| e.into_inner()).flush();

    Ok(match vm_exit {
        VmExit::VcpuFailed { vcpu, reason } => Outcome::VcpuFailed { vcpu, reason },
        _ if panicked.load(Ordering::SeqCst) => Outcome::Panicked,
        // NOTE: a triple fault counts as a reboot, even early in boot before any restart request.
        // The test host showed one such exit 0.1 s into a boot, which did not recur.
        clean => Outcome::Clean(clean),
    })
}

fn create_vm(kvm: &Kvm) -> Result<VmFd> {
    let vm = kvm.create_vm().map_err(vm_ioctl("CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_START as usize)
        .map_err(vm_ioctl("SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_START)
        .map_err(vm_ioctl("SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(vm_ioctl("CREATE_IRQCHIP"))?;
    // The PIT's speaker port (0x61) is emulated in the kernel too, because Linux reads it while
    // calibrating the TSC.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(vm_ioctl("CREATE_PIT2"))?;
    Ok(vm)
}

fn register_memory(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in memory.iter().enumerate() {
        let host_address = memory
            .get_host_address(region.start_addr())
            .expect("every region start is inside guest memory");
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host_address as u64,
        };
        // SAFETY: the region is a live mapping owned by `memory`, which outlives the VM because
        // the process ends with the VM, and no other slot covers it.
        unsafe { vm.set_user_memory_region(region) }.map_err(vm_ioctl("SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Where the kernel landed and where it starts.
struct LoadedKernel {
    entry: GuestAddress,
    end: u64,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

fn load_kernel(memory: &GuestMemoryMmap, config: &VmConfig) -> Result<LoadedKernel> {
    let path = &config.kernel;
    let read_error = |source| BuildError::ReadFile {
        what: "kernel",
        path: path.clone(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    let mut magic = [0u8; 0x206];
    let read = read_prefix(&mut file, &mut magic).map_err(read_error)?;
    let is_elf = read >= 4 && magic[..4] == *b"\x7fELF";
    let is_bzimage = read >= 0x206 && magic[0x202..0x206] == *b"HdrS";
    if !is_elf && !is_bzimage {
        return Err(BuildError::NotAKernel(path.clone()));
    }

    let needed_mib = (HIMEM_START + size + KERNEL_HEADROOM).div_ceil(1 << 20);
    let too_small = || BuildError::MemoryTooSmall {
        memory_mib: config.memory_mib,
        needed_mib,
        path: path.clone(),
    };
    let highmem = Some(GuestAddress(HIMEM_START));
    let loaded: std::result::Result<KernelLoaderResult, _> = if is_elf {
        Elf::load(memory, None, &mut file, highmem)
    } else {
        BzImage::load(memory, None, &mut file, highmem)
    };
    let loaded = loaded.map_err(|source| {
        if config.memory_mib < needed_mib {
            too_small()
        } else {
            BuildError::KernelLoad {
                path: path.clone(),
                source,
            }
        }
    })?;

    let low_memory_end = (config.memory_mib << 20).min(MMIO_GAP_START);
    if loaded.kernel_end + KERNEL_HEADROOM > low_memory_end {
        return Err(BuildError::MemoryTooSmall {
            memory_mib: config.memory_mib,
            needed_mib: (loaded.kernel_end + KERNEL_HEADROOM).div_ceil(1 << 20),
            path: path.clone(),
        });
    }

    let entry = if is_elf {
        loaded.kernel_load
    } else {
        loaded.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
    };
    tracing::debug!(
        entry = entry.0,
        end = loaded.kernel_end,
        elf = is_elf,
        "kernel loaded"
    );
    Ok(LoadedKernel {
        entry,
        end: loaded.kernel_end,
        setup_header: loaded.setup_header,
    })
}

/// Reads as much of `buffer` as the file has, returning the count.
fn read_prefix(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(filled)
}

/// Places the initramfs at the top of low memory, page-aligned, above the kernel.
fn load_initrd(
    memory: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    memory_mib: u64,
) -> Result<InitrdRegion> {
    let read_error = |source| BuildError::ReadFile {
        what: "initramfs",
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();

    let low_memory_end = (memory_mib << 20).min(MMIO_GAP_START);
    let lowest = kernel_end + KERNEL_HEADROOM;
    let address = low_memory_end.checked_sub(size).map(|a| a & !0xfff);
    let Some(address) = address.filter(|&a| a >= lowest) else {
        return Err(BuildError::MemoryTooSmall {
            memory_mib,
            needed_mib: (lowest + size).div_ceil(1 << 20) + 1,
            path: path.to_owned(),
        });
    };

    memory
        .read_exact_volatile_from(GuestAddress(address), &mut file, size as usize)
        .map_err(|e| read_error(std::io::Error::other(e)))?;
    Ok(InitrdRegion {
        address: GuestAddress(address),
        size,
    })
}

/// Joins [`BASE_CMDLINE`] and the user's parameters. Text after ` -- ` stays last, for init,
/// even after devices are added to the kernel part.
fn kernel_cmdline(extra: &str) -> Result<Cmdline> {
    let joined = format!("{BASE_CMDLINE} {extra}");
    Cmdline::try_from(joined.trim_end(), CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)
}

fn write_cmdline(memory: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<usize> {
    let bytes = cmdline.as_cstring().map_err(BuildError::Cmdline)?;
    let bytes = bytes.as_bytes_with_nul();
    memory
        .write_slice(bytes, GuestAddress(CMDLINE_START))
        .map_err(|_| BuildError::Boot(boot::BootError::WriteZeroPage))?;
    Ok(bytes.len())
}

type SharedConsole = Arc<Mutex<SerialConsole>>;

fn create_devices(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    exit: &Arc<ExitSignal>,
    panicked: &Arc<AtomicBool>,
    cmdline: &mut Cmdline,
) -> Result<(Buses, SharedConsole)> {
    let mut pio = Bus::new();
    let mut mmio = Bus::new();

    let output: Box<dyn std::io::Write + Send> = match &config.console {
        Console::Stdout => Box::new(std::io::stdout()),
        Console::File(path) => {
            Box::new(File::create(path).map_err(|source| BuildError::Console {
                path: path.clone(),
                source,
            })?)
        }
    };
    let console = Arc::new(Mutex::new(SerialConsole::new(
        irqfd(vm, SERIAL_GSI)?,
        ConsoleOutput::new(output, panicked.clone()),
    )));
    pio.insert(COM1_PORT, UART_WINDOW_SIZE, console.clone())?;
    pio.insert(
        I8042_DATA_PORT,
        I8042_WINDOW_SIZE,
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
    )?;
    pio.insert(
        ACPI_PM_PORT,
        ACPI_PM_WINDOW_SIZE,
        Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
    )?;

    for (index, disk) in config.disks.iter().enumerate() {
        let gsi = VIRTIO_GSIS[index];
        let base = VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE;
        let block = Block::new(Disk::open(&disk.path, disk.read_only)?);
        let transport = MmioTransport::new(
            Box::new(block),
            memory.clone(),
            Interrupt::new(irqfd(vm, gsi)?),
        );
        mmio.insert(base, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base), gsi, None)
            .map_err(BuildError::Cmdline)?;
        tracing::debug!(disk = %disk.path.display(), read_only = disk.read_only, gsi, base, "virtio-blk attached");
    }

    if let Some(vsock) = &config.vsock {
        let index = config.disks.len();
        let gsi = VIRTIO_GSIS[index];
        let base = VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE;
        let device = Vsock::new(vsock.guest_cid, vsock.path.clone())?;
        let transport = MmioTransport::new(
            Box::new(device),
            memory.clone(),
            Interrupt::new(irqfd(vm, gsi)?),
        );
        mmio.insert(base, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base), gsi, None)
            .map_err(BuildError::Cmdline)?;
        tracing::debug!(path = %vsock.path.display(), cid = vsock.guest_cid, gsi, base, "virtio-vsock attached");
    }

    Ok((Buses { pio, mmio }, console))
}

/// Creates an eventfd that raises `gsi` when written.
fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd> {
    let event =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| BuildError::Resource("an irqfd", e))?;
    vm.register_irqfd(&event, gsi).map_err(vm_ioctl("IRQFD"))?;
    Ok(event)
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    count: u8,
    entry: GuestAddress,
    buses: &Arc<Buses>,
    exit: &Arc<ExitSignal>,
) -> Result<Vec<Vcpu>> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(vm_ioctl("GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(vm_ioctl("CREATE_VCPU"))?;
        let mut cpuid = supported.clone();
        cpuid::filter(&mut cpuid, index, count);
        fd.set_cpuid2(&cpuid).map_err(vm_ioctl("SET_CPUID2"))?;
        regs::setup_boot_vcpu(&fd, entry)?;
        regs::setup_lapic_lint(&fd)?;
        vcpus.push(Vcpu::new(index, fd, buses.clone(), exit.clone()));
    }
    Ok(vcpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(cmdline: &Cmdline) -> String {
        cmdline.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn cmdline_appends_devices_before_init_args() {
        let mut cmdline = kernel_cmdline("root=/dev/vda -- --verbose").unwrap();
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(VIRTIO_MMIO_START), 5, None)
            .unwrap();

        assert_eq!(
            rendered(&cmdline),
            "console=ttyS0 reboot=k panic=-1 pci=off root=/dev/vda \
             virtio_mmio.device=4K@0xd0000000:5 -- --verbose"
        );
    }

    #[test]
    fn cmdline_without_extra_is_base() {
        assert_eq!(rendered(&kernel_cmdline("").unwrap()), BASE_CMDLINE);
    }

    #[test]
    fn cmdline_too_long_is_rejected() {
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(kernel_cmdline(&long), Err(BuildError::Cmdline(_))));
    }
}
