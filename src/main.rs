//! bulkhead: runs OCI containers, each in its own KVM microVM, with a Docker-like CLI.
//!
//! Each subcommand lives in its own file under `commands/`; this file only parses the
//! command line, dispatches, and turns a failure into Docker's exit status 125 with the whole
//! cause chain on stderr.

mod commands;
mod container;
mod runtime;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status when bulkhead itself fails, as Docker uses it.
const EXIT_BULKHEAD_FAILED: u8 = 125;

#[derive(Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Runs OCI containers, each in its own KVM microVM"
)]
struct Cli {
    /// State directory: images, root disks and containers.
    #[arg(
        long,
        global = true,
        env = "BULKHEAD_ROOT",
        default_value = "/var/lib/bulkhead"
    )]
    root: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new container, in its own microVM.
    Run(Box<commands::run::Args>),
    /// List containers.
    Ps(commands::ps::Args),
    /// Print a container's output.
    Logs(commands::logs::Args),
    /// Stop running containers: the stop signal, then a kill after a grace period.
    Stop(commands::stop::Args),
    /// Send a signal to containers' processes.
    Kill(commands::kill::Args),
    /// Remove containers.
    Rm(commands::rm::Args),
    /// Report what this host offers for microVMs.
    Doctor(commands::doctor::Args),
    /// Supervise a detached container (started by `run -d`).
    #[command(hide = true)]
    Supervise(commands::supervise::Args),
    /// Pull an image from a registry and build its root disk.
    Pull(commands::pull::Args),
    /// Load images from a `docker save` tarball or an OCI layout.
    Load(commands::load::Args),
    /// List images.
    Images(commands::images::Args),
    /// Remove images.
    Rmi(commands::rmi::Args),
    /// Give an image another name.
    Tag(commands::tag::Args),
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let cli = Cli::parse();
    // Listing commands end quietly when their reader goes away (`ps -q | head -1`). The
    // supervisor keeps Rust's default of ignoring SIGPIPE, so a client closing a relayed socket
    // cannot kill it.
    if !matches!(cli.command, Command::Run(_) | Command::Supervise(_)) {
        // SAFETY: restoring the default disposition of SIGPIPE has no memory-safety requirements.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // An absolute root keeps the paths that commands print and store valid from any directory.
    let root = std::path::absolute(&cli.root).unwrap_or(cli.root);
    let global = commands::Global { root };
    let result = match cli.command {
        Command::Run(args) => commands::run::run(&global, *args),
        Command::Ps(args) => commands::ps::run(&global, args),
        Command::Logs(args) => commands::logs::run(&global, args),
        Command::Stop(args) => commands::stop::run(&global, args),
        Command::Kill(args) => commands::kill::run(&global, args),
        Command::Rm(args) => commands::rm::run(&global, args),
        Command::Doctor(args) => commands::doctor::run(&global, args),
        Command::Supervise(args) => commands::supervise::run(&global, args),
        Command::Pull(args) => commands::pull::run(&global, args),
        Command::Load(args) => commands::load::run(&global, args),
        Command::Images(args) => commands::images::run(&global, args),
        Command::Rmi(args) => commands::rmi::run(&global, args),
        Command::Tag(args) => commands::tag::run(&global, args),
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
