//! Boots the guest kernel under bulkhead-vmm inside the KVM test host (see tests/kvm-host/),
//! and checks each bad input for its message and exit status.
//!
//! The guest's root disk holds busybox-static and an /init script that prints a marker, reads a
//! file from its own disk, writes a file to a second, writable disk, and then powers off or
//! reboots, as `bulkhead.end=` on the kernel command line selects.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::kvm_host::{self, Output};

const VMM: &str = env!("CARGO_BIN_EXE_bulkhead-vmm");
const MARKER: &str = "BULKHEAD-GUEST-INIT-REACHED";
const PAYLOAD: &str = "payload read from the root disk";
const WRITTEN: &str = "written by the guest to vdb";

const INIT_SCRIPT: &str = r#"#!/bin/sh
mount -t proc proc /proc
echo "BULKHEAD-GUEST-INIT-REACHED"
cat /payload.txt
echo "cpus=$(grep -c ^processor /proc/cpuinfo)"
mount -t ext4 /dev/vdb /mnt
echo "written by the guest to vdb" > /mnt/out.txt
umount /mnt
sync
case "$(cat /proc/cmdline)" in
  *bulkhead.end=reboot*) reboot -f ;;
  *) poweroff -f ;;
esac
"#;

/// Busybox applets the init script uses, linked into /bin of the root disk.
const APPLETS: &[&str] = &[
    "sh", "mount", "umount", "cat", "echo", "grep", "sync", "reboot", "poweroff",
];

/// Disk images shared by the tests of this binary, built once on this machine. They live under
/// the cargo target directory because the test host sees this machine's /tmp hidden by a tmpfs.
struct Images {
    root: PathBuf,
    data: PathBuf,
    not_a_kernel: PathBuf,
}

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmm-boot");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let images = Images {
            root: dir.join("root.ext4"),
            data: dir.join("data.ext4"),
            not_a_kernel: dir.join("not-a-kernel"),
        };
        build_root_disk(&dir.join("rootfs"), &images.root);
        mkfs(&images.data, None, "8M");
        std::fs::write(&images.not_a_kernel, "plain text, not an ELF or bzImage\n").unwrap();
        images
    })
}

fn build_root_disk(tree: &Path, image: &Path) {
    for dir in ["bin", "proc", "dev", "mnt", "sys"] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("busybox-static is installed");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
    }
    let init = tree.join("init");
    std::fs::write(&init, INIT_SCRIPT).unwrap();
    run_checked(Command::new("chmod").arg("0755").arg(&init));
    std::fs::write(tree.join("payload.txt"), format!("{PAYLOAD}\n")).unwrap();
    mkfs(image, Some(tree), "16M");
}

fn mkfs(image: &Path, tree: Option<&Path>, size: &str) {
    let mut command = Command::new("mkfs.ext4");
    command.args(["-q", "-F", "-E", "root_owner=0:0"]);
    if let Some(tree) = tree {
        command.arg("-d").arg(tree);
    }
    command.arg(image).arg(size);
    run_checked(&mut command);
}

fn run_checked(command: &mut Command) {
    let output = command.output().expect("command starts");
    assert!(output.status.success(), "{command:?} failed: {output:?}");
}

/// How the test guest's init ends the VM.
#[derive(Debug, Clone, Copy)]
enum End {
    /// `poweroff -f`: the kernel writes S5 to the ACPI PM1a control register.
    PowerOff,
    /// `reboot -f`: the kernel resets through the keyboard controller (`reboot=k`).
    Reboot,
}

impl End {
    fn cmdline(self) -> &'static str {
        match self {
            End::PowerOff => "poweroff",
            End::Reboot => "reboot",
        }
    }

    /// Returns the exit reason the VMM logs at info level.
    fn logged(self) -> &'static str {
        match self {
            End::PowerOff => "exit=PowerOff",
            End::Reboot => "exit=Reset",
        }
    }
}

/// Boots the test guest with `cpus` vCPUs in the test host. The writable disk is copied to the
/// host's tmpfs first, then checked with debugfs and e2fsck after the VM exits.
fn boot_guest(cpus: u8, end: End) -> Output {
    let images = images();
    let script = format!(
        "cp {data} /tmp/data-{cpus}.ext4 && \
         RUST_LOG=info {VMM} --cpus {cpus} --memory 128 --disk {root},ro \
             --disk /tmp/data-{cpus}.ext4 \
             --cmdline 'root=/dev/vda ro rootfstype=ext4 init=/init quiet bulkhead.end={end}'; \
         status=$?; \
         echo \"vmm-exit=$status\"; \
         debugfs -R 'cat /out.txt' /tmp/data-{cpus}.ext4 2>/dev/null; \
         e2fsck -fn /tmp/data-{cpus}.ext4 >/dev/null 2>&1 && echo fsck-clean; \
         exit $status",
        data = images.data.display(),
        root = images.root.display(),
        end = end.cmdline(),
    );
    kvm_host::shared().run(&["sh", "-c", &script])
}

fn assert_guest_ran(output: &Output, cpus: u8, end: End) {
    let stdout = output.stdout_str();
    assert_eq!(
        output.status, 0,
        "the VMM exits 0 after the guest's {end:?}\n{output}"
    );
    assert!(
        output.stderr_str().contains(end.logged()),
        "the VMM saw the guest's {end:?}\n{output}"
    );
    assert!(
        !stdout.contains("ACPI BIOS Error") && !stdout.contains("ACPI Error"),
        "the kernel accepts the ACPI tables\n{output}"
    );
    assert!(stdout.contains(MARKER), "init printed its marker\n{output}");
    assert!(
        stdout.contains(PAYLOAD),
        "init read the root disk\n{output}"
    );
    assert!(
        stdout.contains(&format!("cpus={cpus}")),
        "the guest sees {cpus} vCPUs\n{output}"
    );
    assert!(
        stdout.contains(WRITTEN),
        "vdb holds the guest's file afterwards\n{output}"
    );
    assert!(
        stdout.contains("fsck-clean"),
        "vdb passes e2fsck -fn\n{output}"
    );
}

#[test]
fn one_cpu_powers_off() {
    let output = boot_guest(1, End::PowerOff);
    assert_guest_ran(&output, 1, End::PowerOff);
}

#[test]
fn two_cpus_reboot() {
    let output = boot_guest(2, End::Reboot);
    assert_guest_ran(&output, 2, End::Reboot);
}

/// One bad input: extra VMM arguments, environment, the expected status and a text the error
/// line must contain.
struct BadInput {
    name: &'static str,
    args: Vec<String>,
    env: Option<(&'static str, &'static str)>,
    status: i32,
    message: String,
}

#[test]
fn bad_inputs_fail_clearly() {
    let images = images();
    let root = format!("{},ro", images.root.display());
    let not_a_kernel = images.not_a_kernel.display().to_string();
    let cases = vec![
        BadInput {
            name: "missing kernel",
            args: vec!["--kernel".into(), "/nonexistent/vmlinux".into()],
            env: None,
            status: 5,
            message: "cannot read kernel /nonexistent/vmlinux".into(),
        },
        BadInput {
            name: "not a kernel",
            args: vec!["--kernel".into(), not_a_kernel.clone()],
            env: None,
            status: 5,
            message: format!("{not_a_kernel} is not a Linux kernel"),
        },
        BadInput {
            name: "memory too small",
            args: vec!["--memory".into(), "16".into()],
            env: None,
            status: 6,
            message: "guest memory of 16 MiB is too small".into(),
        },
        BadInput {
            name: "no KVM device",
            args: vec![],
            env: Some(("BULKHEAD_KVM_DEVICE", "/nonexistent/kvm")),
            status: 3,
            message: "/nonexistent/kvm does not exist".into(),
        },
        BadInput {
            name: "missing disk",
            args: vec!["--disk".into(), "/nonexistent/disk.img".into()],
            env: None,
            status: 7,
            message: "cannot open disk image /nonexistent/disk.img".into(),
        },
        BadInput {
            name: "guest panic",
            args: vec![
                "--disk".into(),
                root,
                "--cmdline".into(),
                "root=/dev/vdz quiet".into(),
            ],
            env: None,
            status: 8,
            message: "the guest kernel panicked".into(),
        },
    ];

    let host = kvm_host::shared();
    for case in cases {
        let mut command = host.command(VMM);
        command.args(&case.args);
        if let Some((key, value)) = case.env {
            command.env(key, value);
        }
        let output = command.output().expect("the test host runs the VMM");
        let stderr = output.stderr_str();

        assert_eq!(
            output.status, case.status,
            "{}: exit status\n{output}",
            case.name
        );
        assert!(
            stderr.contains(&case.message),
            "{}: message\n{output}",
            case.name
        );
        assert!(
            !stderr.contains("panicked at"),
            "{}: the VMM itself panicked\n{output}",
            case.name
        );
    }
}

#[test]
fn pvm_host_is_named() {
    if !Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!("skipped: this machine's KVM is not PVM");
        return;
    }
    let output = Command::new(VMM).output().expect("the VMM starts");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("PVM (module kvm_pvm)"), "{stderr}");
    assert!(stderr.contains("Intel VT-x or AMD-V"), "{stderr}");
}

/// Debian's generic kernel is a bzImage. Without a root disk it panics at mount time, which
/// proves the bzImage loader and boot path reach the kernel's own code.
#[test]
fn bzimage_kernel_boots() {
    let bzimage = std::fs::read_dir("/boot")
        .expect("/boot is readable")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .expect("scripts/setup installs linux-image-amd64, which has a bzImage in /boot");

    let output = kvm_host::shared().run(&[
        VMM,
        "--kernel",
        bzimage.to_str().unwrap(),
        "--memory",
        "256",
        "--cmdline",
        "root=/dev/vdz",
    ]);

    assert_eq!(
        output.status, 8,
        "the guest panics without a root disk\n{output}"
    );
    assert!(
        output.stdout_str().contains("Linux version"),
        "the kernel printed its banner\n{output}"
    );
    assert!(output.stdout_str().contains("Kernel panic"), "{output}");
}
