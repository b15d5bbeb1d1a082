//! Checks the KVM test host itself: KVM works inside, and commands see their arguments, stdin,
//! environment and writable paths, and report stdout, stderr and exit status faithfully.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::kvm_host::{self, KvmHost, Options};

/// The port of the HTTP server that `forwarded_port_reaches_server_inside` starts in the host.
const HTTP_PORT: u16 = 8080;

fn host() -> &'static KvmHost {
    kvm_host::shared_with(Options::default().forward(HTTP_PORT))
}

#[test]
fn kvm_creates_vm_and_vcpu() {
    // _IO(0xAE, n): KVM_GET_API_VERSION is 0x00, KVM_CREATE_VM 0x01, KVM_CREATE_VCPU 0x41.
    let script = "import fcntl, os\n\
                  kvm = os.open('/dev/kvm', os.O_RDWR)\n\
                  print(fcntl.ioctl(kvm, 0xAE00))\n\
                  vm = fcntl.ioctl(kvm, 0xAE01, 0)\n\
                  vcpu = fcntl.ioctl(vm, 0xAE41, 0)\n\
                  print(vm > 2 and vcpu > vm)";
    let out = host().run(&["/usr/bin/python3", "-c", script]);
    assert_eq!(out.status, 0, "{out}");
    assert_eq!(out.stdout_str(), "12\nTrue\n");
}

#[test]
fn exit_status_passes_through() {
    let cases = [
        ("exit 0", 0),
        ("exit 3", 3),
        ("exit 130", 130),
        ("kill -TERM $$", 128 + 15),
    ];
    for (i, (script, want)) in cases.into_iter().enumerate() {
        let out = host().run(&["sh", "-c", script]);
        assert_eq!(out.status, want, "case {i} ({script}): {out}");
    }
}

#[test]
fn missing_program_exits_127() {
    let out = host().run(&["/nonexistent/program"]);
    assert_eq!(out.status, 127, "{out}");
    assert!(out.stderr_str().contains("/nonexistent/program"), "{out}");
}

#[test]
fn stdout_and_stderr_stay_separate() {
    let out = host().run(&["sh", "-c", "echo to-out; echo to-err >&2; echo more-out"]);
    assert_eq!(out.status, 0, "{out}");
    assert_eq!(out.stdout_str(), "to-out\nmore-out\n");
    assert_eq!(out.stderr_str(), "to-err\n");
}

#[test]
fn stdin_passes_through() {
    // Larger than a pipe buffer and a TCP window, so that both directions must flow at once.
    let input: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let out = host()
        .command("cat")
        .stdin(input.clone())
        .output()
        .expect("cat runs");
    assert_eq!(
        out.status,
        0,
        "status {} stderr {}",
        out.status,
        out.stderr_str()
    );
    assert!(
        out.stdout == input,
        "cat returned {} of {} bytes, or other bytes",
        out.stdout.len(),
        input.len()
    );
}

#[test]
fn environment_and_working_directory_carry_over() {
    let out = host()
        .command("sh")
        .args(["-c", "echo \"$PWD $BULKHEAD_TEST_VALUE $HOME\""])
        .env("BULKHEAD_TEST_VALUE", "seen")
        .output()
        .expect("sh runs");
    let home = std::env::var("HOME").unwrap_or_default();
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(
        out.stdout_str(),
        format!("{} seen {home}\n", cwd.display()),
        "{out}"
    );
}

/// A directory of this machine that must be read-only inside: the checkout, unless it lies under
/// `/tmp`, which the host overlays with a writable layer.
fn read_only_probe_dir() -> &'static str {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    if manifest_dir.starts_with("/tmp/") {
        "/var/cache"
    } else {
        manifest_dir
    }
}

#[test]
fn only_tmpfs_paths_are_writable() {
    let cases = [
        ("/tmp", true),
        ("/var/tmp", true),
        ("/run", true),
        ("/var/lib/bulkhead", true),
        ("/dev/shm", true),
        (read_only_probe_dir(), false),
    ];
    for (i, (dir, writable)) in cases.into_iter().enumerate() {
        let script = format!("echo x > {dir}/kvm-host-probe && cat {dir}/kvm-host-probe");
        let out = host().run(&["sh", "-c", &script]);
        assert_eq!(out.success(), writable, "case {i} ({dir}): {out}");
        if writable {
            assert_eq!(out.stdout_str(), "x\n", "case {i} ({dir})");
        } else {
            assert!(
                out.stderr_str().contains("Read-only file system"),
                "case {i} ({dir}): {out}"
            );
        }
    }
}

#[test]
fn file_written_outside_is_visible_inside() {
    let dir = env!("CARGO_TARGET_TMPDIR");
    let path = format!("{dir}/kvm-host-visible-{}", std::process::id());
    std::fs::write(&path, "from outside\n").expect("write probe file");
    let out = host().run(&["cat", &path]);
    std::fs::remove_file(&path).expect("remove probe file");
    assert_eq!(out.stdout_str(), "from outside\n", "{out}");
}

#[test]
fn dropping_a_spawned_command_kills_it() {
    let marker = format!("/tmp/killed-{}", std::process::id());
    let child = host()
        .command("sh")
        .args(["-c", &format!("sleep 30; touch {marker}")])
        .spawn()
        .expect("sh starts");
    drop(child);
    // Once the server has killed the group, no sleep of that command is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = host().run(&["sh", "-c", "pgrep -f '^sleep 30$' || true"]);
        if out.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "sleep 30 still runs: {out}");
    }
    let out = host().run(&["test", "-e", &marker]);
    assert_eq!(out.status, 1, "the killed command went on: {out}");
}

#[test]
fn forwarded_port_reaches_server_inside() {
    let host = host();
    let root = env!("CARGO_MANIFEST_DIR");
    let server = host
        .command("/usr/bin/python3")
        .args([
            "-m",
            "http.server",
            "--directory",
            root,
            &HTTP_PORT.to_string(),
        ])
        .spawn()
        .expect("http.server starts");
    let url = format!("http://127.0.0.1:{}/Cargo.toml", host.host_port(HTTP_PORT));
    let want = std::fs::read(format!("{root}/Cargo.toml")).expect("read Cargo.toml");

    // Until the server listens, QEMU accepts and then drops the connection; poll until it serves the file.
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let out = Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--fail",
                "--max-time",
                "10",
                &url,
            ])
            .output()
            .expect("curl runs (scripts/setup installs it)");
        if out.status.success() {
            break out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(server);
    assert!(body == want, "{url} returned other bytes than Cargo.toml");
}

/// Returns the run script, for tests that call it as a user does: one host, one command.
fn run_script() -> Command {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kvm-host/run"))
}

#[test]
fn run_script_relays_streams_and_status() {
    let out = run_script()
        .args(["--", "sh", "-c", "echo out; echo err >&2; exit 7"])
        .output()
        .expect("run starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "stderr: {stderr}");
    // Kernel messages stay in the console log.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(stderr.ends_with("err\n"), "stderr: {stderr}");
}

#[test]
fn run_script_without_qemu_fails_clearly() {
    let out = run_script()
        .args(["--", "true"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("run starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert!(
        stderr.contains("qemu-system-x86_64 not found"),
        "stderr: {stderr}"
    );
}

#[test]
#[ignore = "boots a second host only to see it fail (about 20 s)"]
fn run_script_reports_missing_svm() {
    let logs = format!(
        "{}/kvm-host-no-svm-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    let out = run_script()
        .args(["--qemu-cpu", "max,-svm", "--log-dir", &logs, "--", "true"])
        .output()
        .expect("run starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::remove_dir_all(&logs).expect("remove the log directory");
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert!(stderr.contains("kvm-amd did not load"), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("{logs}/console.log")),
        "stderr: {stderr}"
    );
}
