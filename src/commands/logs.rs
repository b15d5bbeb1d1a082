//! `bulkhead logs [-f] CONTAINER`: prints the container's stdout and stderr, to this process's
//! stdout and stderr, and with `-f` keeps following until the container exits.

use std::fs::File;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{control, Global};
use crate::container::{self, log};

/// How often `logs -f` looks for new output.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// Arguments of `logs`.
#[derive(clap::Args)]
pub struct Args {
    /// Keep printing new output until the container exits.
    #[arg(short, long)]
    pub follow: bool,

    /// Container by name or id.
    pub container: String,
}

pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let container = container::find(&global.root, &args.container)?;
    let path = container.output_log();
    let file = match File::open(&path) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("failed to open {}", path.display())),
    };
    let mut reader = file.map(log::Reader::new);

    loop {
        if reader.is_none() {
            reader = File::open(&path).ok().map(log::Reader::new);
        }
        if let Some(reader) = reader.as_mut() {
            while let Some((stream, data)) = reader.next_record()? {
                let result = if stream == log::STDERR {
                    io::stderr().lock().write_all(&data)
                } else {
                    let mut out = io::stdout().lock();
                    out.write_all(&data).and_then(|()| out.flush())
                };
                if result.is_err() {
                    // The reader of our output went away (a closed pipe): nothing left to do.
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        let running = container
            .state()
            .map(|s| control::is_running(&s))
            .unwrap_or(false);
        if !running {
            // One more pass picks up output written just before the exit.
            if let Some(reader) = reader.as_mut() {
                while let Some((stream, data)) = reader.next_record()? {
                    let _ = if stream == log::STDERR {
                        io::stderr().write_all(&data)
                    } else {
                        io::stdout().write_all(&data)
                    };
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(FOLLOW_INTERVAL);
    }
}
