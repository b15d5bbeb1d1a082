//! `bulkhead doctor`: reports what this host offers for running microVMs.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Result;
use vmm::host::{self, KvmKind};

use super::Global;
use crate::runtime::vm;

/// Arguments of `doctor`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(global: &Global, _args: Args) -> Result<ExitCode> {
    // Names of the checks that failed, for the closing line.
    let mut failed: Vec<&str> = Vec::new();

    let kvm_path = host::kvm_device_path();
    let kind = host::detect_kvm_kind();
    let kvm_line = match (kind, kvm_path.exists()) {
        (_, false) => {
            failed.push("KVM");
            format!(
                "missing: {} does not exist (load kvm_intel or kvm_amd)",
                kvm_path.display()
            )
        }
        (Some(KvmKind::Pvm), true) => {
            failed.push("KVM");
            "PVM (kvm_pvm): runs only PVM-enabled guest kernels; standard guests need Intel VT-x \
             or AMD-V (a bulkhead checkout can run them under emulation: tests/kvm-host/run)"
                .to_owned()
        }
        (Some(kind), true) => match host::open_kvm() {
            Ok(_) => format!("{kind}, {} usable", kvm_path.display()),
            Err(error) => {
                failed.push("KVM");
                format!("{kind}, but unusable: {error}")
            }
        },
        (None, true) => format!(
            "{} exists, but no KVM module is listed in /sys/module",
            kvm_path.display()
        ),
    };
    println!("KVM:         {kvm_line}");

    let kernel = std::env::var_os(vmm::config::KERNEL_ENV)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| vmm::config::DEFAULT_KERNEL.into());
    if !report_file(
        "Kernel:",
        &kernel,
        "run scripts/setup or set BULKHEAD_KERNEL",
    ) {
        failed.push("Kernel");
    }
    match vm::initramfs() {
        Ok(path) => {
            if !report_file("Agent:", &path, "run scripts/setup") {
                failed.push("Agent");
            }
        }
        Err(error) => {
            failed.push("Agent");
            println!("Agent:       missing: {error}");
        }
    }
    let vmm_binary = vm::vmm_binary();
    println!("VMM:         {}", vmm_binary.display());

    let mkfs = Command::new("mkfs.ext4").arg("-V").output();
    match mkfs {
        Ok(output) => {
            let version = String::from_utf8_lossy(&output.stderr);
            println!(
                "mkfs.ext4:   {}",
                version.lines().next().unwrap_or("present").trim()
            );
        }
        Err(_) => {
            failed.push("mkfs.ext4");
            println!("mkfs.ext4:   missing: install e2fsprogs");
        }
    }
    println!("State root:  {}", global.root.display());

    if failed.is_empty() {
        println!("Ready to run containers.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("Not ready: see the {} line(s) above.", failed.join(", "));
        Ok(ExitCode::from(1))
    }
}

fn report_file(label: &str, path: &Path, fix: &str) -> bool {
    match std::fs::metadata(path) {
        Ok(metadata) => {
            println!("{label:<12} {} ({} bytes)", path.display(), metadata.len());
            true
        }
        Err(_) => {
            println!("{label:<12} missing: {} ({fix})", path.display());
            false
        }
    }
}
