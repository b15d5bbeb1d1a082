//! Talking to a running container's supervisor, for `stop`, `kill` and `rm -f`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::container::{Container, ContainerState, Status};

/// Sends one control line and checks the supervisor's reply.
pub fn request(container: &Container, line: &str) -> Result<()> {
    let path = container.control_path();
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach the supervisor of container {}",
            container.short_id()
        )
    })?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    match answer.trim_end() {
        "ok" => Ok(()),
        other => bail!(
            "the supervisor of container {} rejected {line:?}: {other}",
            container.short_id()
        ),
    }
}

/// Applies `action` to each named container as Docker's multi-container commands do: prints
/// each name that succeeded, reports each failure on stderr, and returns 1 when any failed.
pub fn for_each(names: &[String], mut action: impl FnMut(&str) -> Result<()>) -> ExitCode {
    let mut failed = false;
    for name in names {
        match action(name) {
            Ok(()) => println!("{name}"),
            Err(error) => {
                eprintln!("bulkhead: {error:#}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Whether the container's supervisor still runs.
pub fn is_running(state: &ContainerState) -> bool {
    state.status == Status::Running && state.supervisor_pid.is_some_and(process_alive)
}

/// Waits until the container has exited, up to `timeout`.
pub fn wait_exited(container: &Container, timeout: Duration) -> Result<ContainerState> {
    let deadline = Instant::now() + timeout;
    loop {
        // A container started with --rm removes its own files once it has exited.
        if !container.dir.exists() {
            return Ok(ContainerState {
                status: Status::Exited,
                ..ContainerState::default()
            });
        }
        let state = container.state()?;
        if !is_running(&state) {
            return Ok(state);
        }
        if Instant::now() > deadline {
            bail!(
                "container {} did not exit within {} s",
                container.short_id(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that the container's supervisor and its bulkhead-vmm both still run. A VMM that died
/// leaves the state at `Running` until its supervisor records the exit, so `ps` checks this to
/// not show such a container as up.
pub fn vm_is_running(state: &ContainerState) -> bool {
    is_running(state) && state.vmm_pid.is_none_or(process_alive)
}

/// Whether `pid` names a process that has not exited. A zombie has exited: it only waits for
/// its parent to read its status.
fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    // The state is the first field after the command name, which is in parentheses and may
    // itself contain spaces and parentheses.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
