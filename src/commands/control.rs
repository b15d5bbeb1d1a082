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

fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}
