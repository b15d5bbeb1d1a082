//! bulkhead: runs OCI containers, each in its own KVM microVM, with a Docker-like CLI.
//!
//! Each subcommand lives in its own file under `commands/`; this file only parses the
//! command line, dispatches, and turns a failure into Docker's exit status 125 with the whole
//! cause chain on stderr.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status when bulkhead itself fails, as Docker uses it.
const EXIT_BULKHEAD_FAILED: u8 = 125;

#[derive(Parser)]
#[command(name = "bulkhead", version, about = "Runs OCI containers, each in its own KVM microVM")]
struct Cli {
    /// State directory: images, root disks and containers.
    #[arg(long, global = true, env = "BULKHEAD_ROOT", default_value = "/var/lib/bulkhead")]
    root: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pull an image from a registry and build its root disk.
    Pull(commands::pull::Args),
    /// Load images from a `docker save` tarball or an OCI layout.
    Load(commands::load::Args),
    /// List images.
    Images(commands::images::Args),
    /// Remove images.
    Rmi(commands::rmi::Args),
    /// Show the config, layers and size of images as JSON.
    Inspect(commands::inspect::Args),
    /// Store credentials for a registry.
    Login(commands::login::Args),
    /// Remove stored credentials for a registry.
    Logout(commands::logout::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    // An absolute root keeps the paths that commands print and store valid from any directory.
    let root = std::path::absolute(&cli.root).unwrap_or(cli.root);
    let global = commands::Global { root };
    let result = match cli.command {
        Command::Pull(args) => commands::pull::run(&global, args),
        Command::Load(args) => commands::load::run(&global, args),
        Command::Images(args) => commands::images::run(&global, args),
        Command::Rmi(args) => commands::rmi::run(&global, args),
        Command::Inspect(args) => commands::inspect::run(&global, args),
        Command::Login(args) => commands::login::run(&global, args),
        Command::Logout(args) => commands::logout::run(&global, args),
    };

    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("bulkhead: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(EXIT_BULKHEAD_FAILED)
        }
    }
}
