//! `bulkhead ps [-a] [-q]`: lists containers as `docker ps` does.

use std::process::ExitCode;

use anyhow::Result;

use super::{control, Global};
use crate::container::state::now;
use crate::container::{self, ContainerConfig, ContainerState, Status};

/// Arguments of `ps`.
#[derive(clap::Args)]
pub struct Args {
    /// Show every container, not only running ones.
    #[arg(short, long)]
    pub all: bool,

    /// Print only the container ids.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for (container, config) in container::list(&global.root)?.into_iter().rev() {
        let state = container.state().unwrap_or_default();
        let running = control::vm_is_running(&state);
        if !args.all && !running {
            continue;
        }
        if args.quiet {
            println!("{}", container.short_id());
            continue;
        }
        rows.push([
            container.short_id().to_owned(),
            config.image.clone(),
            quoted_command(&config),
            format!(
                "{} ago",
                human_duration(now().saturating_sub(config.created))
            ),
            status_text(&state, running),
            ports_text(&config, running),
            config.name.clone(),
        ]);
    }
    if !args.quiet {
        print_table(
            &[
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn quoted_command(config: &ContainerConfig) -> String {
    let command = config.argv.join(" ");
    let shortened: String = if command.chars().count() > 20 {
        command.chars().take(19).chain(['…']).collect()
    } else {
        command
    };
    format!("\"{shortened}\"")
}

fn status_text(state: &ContainerState, running: bool) -> String {
    match (state.status, running) {
        (Status::Created, _) => "Created".to_owned(),
        (Status::Running, true) => match state.started {
            Some(started) => format!("Up {}", human_duration(now().saturating_sub(started))),
            None => "Starting".to_owned(),
        },
        (Status::Running, false) if control::is_running(state) => {
            "Exited (bulkhead-vmm gone)".to_owned()
        }
        (Status::Running, false) => "Exited (supervisor gone)".to_owned(),
        (Status::Exited, _) => {
            let code = state.exit_code.map_or("?".to_owned(), |c| c.to_string());
            let ago = state
                .finished
                .map(|finished| format!(" {} ago", human_duration(now().saturating_sub(finished))))
                .unwrap_or_default();
            let reason = match &state.error {
                Some(error) => format!(" ({})", first_line(error, 60)),
                None => String::new(),
            };
            format!("Exited ({code}){ago}{reason}")
        }
    }
}

/// The first line of `text`, cut to `max` characters.
fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        line.chars().take(max - 1).chain(['…']).collect()
    } else {
        line.to_owned()
    }
}

/// Formats the published ports; none for a container that is not running, as in Docker.
fn ports_text(config: &ContainerConfig, running: bool) -> String {
    if !running {
        return String::new();
    }
    config
        .ports
        .iter()
        .map(|p| format!("{}:{}->{}/tcp", p.host_ip, p.host_port, p.container_port))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Formats seconds as Docker does: "5 seconds", "3 minutes", "2 hours", "4 days".
fn human_duration(seconds: u64) -> String {
    let (value, unit) = match seconds {
        0..=1 => return "Less than a second".to_owned(),
        2..=59 => (seconds, "second"),
        60..=3599 => (seconds / 60, "minute"),
        3600..=86399 => (seconds / 3600, "hour"),
        _ => (seconds / 86400, "day"),
    };
    format!("{value} {unit}{}", if value == 1 { "" } else { "s" })
}

fn print_table(headers: &[&str; 7], rows: &[[String; 7]]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("   ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::container::PortMapping;

    #[test]
    fn ports_shown_only_while_running() {
        let config = ContainerConfig {
            ports: vec![PortMapping {
                host_ip: "0.0.0.0".into(),
                host_port: 8080,
                container_port: 80,
            }],
            ..ContainerConfig::default()
        };

        assert_eq!(ports_text(&config, true), "0.0.0.0:8080->80/tcp");
        assert_eq!(ports_text(&config, false), "");
    }

    /// Waits until `pid` is a zombie: exited, with its status not yet read.
    fn wait_for_zombie(pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            if stat
                .rsplit_once(')')
                .unwrap()
                .1
                .trim_start()
                .starts_with('Z')
            {
                return;
            }
            assert!(Instant::now() < deadline, "{pid} did not exit: {stat}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn dead_vmm_shows_exited() {
        let mut zombie = Command::new("true").spawn().unwrap();
        wait_for_zombie(zombie.id());
        let mut reaped = Command::new("true").spawn().unwrap();
        let reaped_pid = reaped.id();
        reaped.wait().unwrap();

        let cases = [
            ("VMM runs", std::process::id(), "Up "),
            ("VMM is a zombie", zombie.id(), "Exited (bulkhead-vmm gone)"),
            ("VMM reaped", reaped_pid, "Exited (bulkhead-vmm gone)"),
        ];
        for (name, vmm_pid, expected) in cases {
            let state = ContainerState {
                status: Status::Running,
                supervisor_pid: Some(std::process::id()),
                vmm_pid: Some(vmm_pid),
                started: Some(now()),
                ..ContainerState::default()
            };
            let running = control::vm_is_running(&state);
            assert_eq!(running, expected == "Up ", "{name}");
            let text = status_text(&state, running);
            assert!(text.starts_with(expected), "{name}: {text}");
        }
        zombie.wait().unwrap();
    }

    #[test]
    fn durations_read_like_docker() {
        let cases = [
            (0, "Less than a second"),
            (5, "5 seconds"),
            (60, "1 minute"),
            (7200, "2 hours"),
            (90000, "1 day"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(human_duration(seconds), expected);
        }
    }
}
