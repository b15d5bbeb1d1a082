//! `bulkhead-agent`: PID 1 inside a bulkhead microVM.
//!
//! At start it mounts the container root (an overlay of the image disk and the writable disk),
//! enters it, connects to the host over vsock and announces itself with
//! [`Event::Ready`](bulkhead_protocol::Event::Ready). Then it runs the processes the host
//! requests, relays guest TCP ports to the host, reaps orphans, and powers the VM off on request.
//!
//! With `--rootfs DIR` it runs on an ordinary Linux host instead, for tests: inside new mount and
//! PID namespaces it overlays DIR with a tmpfs, pivots into it, talks to the host over Unix
//! sockets and exits at shutdown instead of powering off. Everything after the root switch is
//! the same code as in the VM.

mod control;
mod mount;
mod network;
mod process;
mod relay;
mod rootfs;
mod shutdown;
mod signal;
mod syscall;
mod transport;
mod tty;
mod user;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulkhead_protocol::{Event, CONTROL_PORT, HOST_CID, PROTOCOL_VERSION, RELAY_PORT};
use clap::Parser;
use nix::mount::MsFlags;
use tracing::{error, info};

use crate::control::{End, EventSink};
use crate::process::Processes;
use crate::rootfs::{Lower, Switch, Upper};
use crate::shutdown::Finish;
use crate::syscall::{Linux, Syscall};
use crate::transport::{Endpoint, Listener};

/// Directory in which the agent mounts the layers and the overlay.
const STAGING: &str = "/run/bulkhead";
/// The image disk.
const IMAGE_DISK: &str = "/dev/vda";
/// The container's writable disk, when the host attached one.
const WRITABLE_DISK: &str = "/dev/vdb";
/// Time the agent waits for the image disk to appear.
const DISK_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the agent retries its control connection to the host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs as PID 1 inside a bulkhead microVM. In the VM every option may also come from the
/// kernel command line as `bulkhead.<option>=<value>`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Endpoint the agent connects to for its control connection: vsock:CID:PORT or unix:PATH
    /// [default: vsock:2:1024].
    #[arg(long)]
    control: Option<Endpoint>,

    /// Endpoint on which the agent accepts relay connections: vsock:PORT or unix:PATH
    /// [default: vsock:1025].
    #[arg(long)]
    relay: Option<Endpoint>,

    /// Run outside a VM, with DIR as the read-only image layer and a tmpfs as the writable one.
    /// Needs new mount and PID namespaces (unshare --mount --pid --fork) and a DIR outside /run.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,

    /// Log filter in tracing's EnvFilter syntax [default: info].
    #[arg(long)]
    log: Option<String>,
}

/// Returns the value of `bulkhead.<name>=` on the kernel command line `cmdline`.
fn cmdline_option(cmdline: &str, name: &str) -> Option<String> {
    let prefix = format!("bulkhead.{name}=");
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix(&prefix))
        .map(str::to_owned)
}

/// Fills options missing from the command line from the kernel command line.
fn apply_cmdline(args: &mut Args, cmdline: &str) -> Result<()> {
    if args.control.is_none() {
        if let Some(value) = cmdline_option(cmdline, "control") {
            args.control = Some(value.parse().map_err(anyhow::Error::msg)?);
        }
    }
    if args.relay.is_none() {
        if let Some(value) = cmdline_option(cmdline, "relay") {
            args.relay = Some(value.parse().map_err(anyhow::Error::msg)?);
        }
    }
    if args.log.is_none() {
        args.log = cmdline_option(cmdline, "log");
    }
    Ok(())
}

/// Prints an error with its causes, one `: `-separated line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn init_logging(filter: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

/// Mounts what the agent itself needs from the initramfs: /proc for the kernel command line and
/// /dev for the disks and the console.
fn mount_early(sys: &dyn Syscall) -> Result<()> {
    sys.mkdir_all(Path::new("/proc"), 0o555)?;
    sys.mount(
        Some("proc"),
        Path::new("/proc"),
        Some("proc"),
        MsFlags::empty(),
        None,
    )
    .context("failed to mount /proc in the initramfs")?;
    sys.mkdir_all(Path::new("/dev"), 0o755)?;
    sys.mount(
        Some("devtmpfs"),
        Path::new("/dev"),
        Some("devtmpfs"),
        MsFlags::empty(),
        None,
    )
    .context("failed to mount /dev in the initramfs")?;
    Ok(())
}

/// Points stdin, stdout and stderr at /dev/console when the kernel could not (an initramfs
/// without /dev/console starts init with no open descriptors).
fn open_console() {
    // SAFETY: F_GETFD only queries descriptor 2.
    if unsafe { libc::fcntl(2, libc::F_GETFD) } >= 0 {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    let fd = std::os::fd::IntoRawFd::into_raw_fd(console);
    for target in 0..=2 {
        if fd != target {
            // SAFETY: dup2 only replaces descriptor `target`, which no Rust object owns yet.
            unsafe { libc::dup2(fd, target) };
        }
    }
}

fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The start-up steps that differ between a VM and a test run on a host.
struct Plan {
    lower: Lower,
    upper: Upper,
    switch: Switch,
    finish: Finish,
}

fn main() {
    let args = Args::parse();
    let in_vm = std::process::id() == 1 && args.rootfs.is_none();
    if let Err(err) = run(args, in_vm) {
        // The subscriber may not be installed yet, so print directly as well.
        eprintln!("bulkhead-agent: {err:#}");
        error!(error = format!("{err:#}"), "agent failed");
        if in_vm {
            // PID 1 must not exit; powering off ends the VM with the error on the console.
            let _ = Linux.power_off();
        }
        std::process::exit(1);
    }
}

fn run(mut args: Args, in_vm: bool) -> Result<()> {
    let sys: Arc<dyn Syscall> = Arc::new(Linux);
    // Before any thread exists, so that every thread inherits the blocked signals.
    signal::block().context("failed to block signals")?;

    if in_vm {
        mount_early(sys.as_ref())?;
        open_console();
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        apply_cmdline(&mut args, &cmdline)?;
    }
    init_logging(args.log.as_deref());
    info!(
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        since_boot_s = seconds_since_boot(),
        "agent starting"
    );

    let plan = match &args.rootfs {
        Some(dir) => Plan {
            lower: Lower::Directory(
                dir.canonicalize()
                    .with_context(|| format!("root file system {} not found", dir.display()))?,
            ),
            upper: Upper::Tmpfs,
            switch: Switch::PivotRoot,
            finish: Finish::Exit,
        },
        None => {
            anyhow::ensure!(
                wait_for_path(Path::new(IMAGE_DISK), DISK_TIMEOUT),
                "image disk {IMAGE_DISK} did not appear within {DISK_TIMEOUT:?}"
            );
            let upper = if Path::new(WRITABLE_DISK).exists() {
                Upper::Disk(WRITABLE_DISK.into())
            } else {
                Upper::Tmpfs
            };
            Plan {
                lower: Lower::Disk(IMAGE_DISK.into()),
                upper,
                switch: Switch::MoveAndChroot,
                finish: Finish::PowerOff,
            }
        }
    };

    // Unix socket paths are only reachable before the root switch, so both connections are set
    // up first. The host accepts the control connection but waits for Ready.
    let control_endpoint = args.control.clone().unwrap_or(Endpoint::Vsock {
        cid: HOST_CID,
        port: CONTROL_PORT,
    });
    let control = transport::connect_with_retry(&control_endpoint, CONNECT_TIMEOUT)
        .with_context(|| format!("failed to connect to the host at {control_endpoint}"))?;
    let relay_endpoint = args.relay.clone().unwrap_or(Endpoint::Vsock {
        cid: u32::MAX,
        port: RELAY_PORT,
    });
    let relay_listener = Listener::bind(&relay_endpoint)
        .with_context(|| format!("failed to listen for relay connections on {relay_endpoint}"))?;

    set_up_root(sys.as_ref(), &plan)?;
    if let Err(err) = sys.set_link_up("lo") {
        error!(error = %err, "failed to bring up the loopback interface");
    }

    let events = EventSink::new(
        control
            .try_clone()
            .context("failed to duplicate the control socket")?,
    );
    let processes = Processes::new(Arc::clone(&sys), events.clone());
    let finish = plan.finish;
    let signal_sys = Arc::clone(&sys);
    signal::start(processes.clone(), move |_| {
        shutdown::run(signal_sys.as_ref(), finish)
    });
    relay::start(relay_listener);

    events.send(&Event::Ready {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
    });
    info!(
        control = %control_endpoint,
        relay = %relay_endpoint,
        since_boot_s = seconds_since_boot(),
        "agent ready"
    );

    match control::serve(control, &sys, &processes, &events) {
        End::Shutdown | End::Disconnected => shutdown::run(sys.as_ref(), plan.finish),
    }
}

/// Returns the time since the kernel booted (CLOCK_BOOTTIME) in seconds, or -1 when the clock
/// cannot be read. The start and ready log lines carry it, so the console shows how long the
/// kernel and the agent's set-up took (bench/agent reads them).
fn seconds_since_boot() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|time| time.tv_sec() as f64 + time.tv_nsec() as f64 / 1e9)
        .unwrap_or(-1.0)
}

/// Builds the container root and makes it the agent's root.
fn set_up_root(sys: &dyn Syscall, plan: &Plan) -> Result<()> {
    // Nothing mounted from here on may propagate to a mount namespace the agent came from.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .context("failed to make the mount tree private")?;
    let staging = Path::new(STAGING);
    sys.mkdir_all(staging, 0o700)?;
    sys.mount(
        Some("tmpfs"),
        staging,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .with_context(|| format!("failed to mount a tmpfs on {STAGING}"))?;

    let root = rootfs::prepare(sys, staging, &plan.lower, &plan.upper)
        .context("failed to build the container root")?;
    rootfs::enter(sys, &root, plan.switch).context("failed to enter the container root")?;
    info!(?plan.lower, ?plan.upper, "entered the container root");
    if plan.finish == Finish::PowerOff {
        let acpi = syscall::detect_power_off();
        info!(acpi, "checked for ACPI power-off");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_options_fill_missing_args() {
        let mut args = Args::parse_from(["bulkhead-agent", "--log", "warn"]);
        let cmdline = "console=ttyS0 bulkhead.log=debug bulkhead.control=vsock:2:2000 quiet";
        apply_cmdline(&mut args, cmdline).unwrap();

        assert_eq!(args.log.as_deref(), Some("warn"));
        assert_eq!(args.control, Some(Endpoint::Vsock { cid: 2, port: 2000 }));
        assert_eq!(args.relay, None);
    }

    #[test]
    fn cmdline_option_rejects_invalid_endpoint() {
        let mut args = Args::parse_from(["bulkhead-agent"]);
        assert!(apply_cmdline(&mut args, "bulkhead.relay=tcp:1").is_err());
    }
}
