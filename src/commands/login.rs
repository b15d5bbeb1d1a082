//! `bulkhead login [SERVER]`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::{Global, RegistryArgs};

/// Arguments of `login`.
#[derive(clap::Args)]
pub struct Args {
    /// Registry host[:port]; Docker Hub when absent.
    pub server: Option<String>,

    /// User name.
    #[arg(short, long)]
    pub username: Option<String>,

    /// Password (visible in the process list; prefer --password-stdin).
    #[arg(short, long)]
    pub password: Option<String>,

    /// Read the password from stdin.
    #[arg(long)]
    pub password_stdin: bool,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let server = args
        .server
        .clone()
        .unwrap_or_else(|| ::images::reference::DEFAULT_REGISTRY.to_string());
    let username = match &args.username {
        Some(user) => user.clone(),
        None => prompt("Username: ")?,
    };
    let password = match (&args.password, args.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(password), false) => password.clone(),
        (None, true) => read_line().context("failed to read the password from stdin")?,
        (None, false) => prompt("Password: ")?,
    };
    if password.is_empty() {
        bail!("the password is empty");
    }

    let options = args.registry.options(&global.root)?;
    ::images::registry::login(&options, &server, &username, &password)
        .with_context(|| format!("failed to log in to {server}"))?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

fn prompt(label: &str) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "no terminal to ask for the {}; pass it as an option",
            label.trim_end_matches(": ").to_lowercase()
        );
    }
    eprint!("{label}");
    std::io::stderr().flush()?;
    read_line().context("failed to read from the terminal")
}

fn read_line() -> std::io::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
