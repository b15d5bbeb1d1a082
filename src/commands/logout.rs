//! `bulkhead logout [SERVER]`.

use std::process::ExitCode;

use super::{Global, RegistryArgs};

/// Arguments of `logout`.
#[derive(clap::Args)]
pub struct Args {
    /// Registry host[:port]; Docker Hub when absent.
    pub server: Option<String>,
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let server = args
        .server
        .unwrap_or_else(|| ::images::reference::DEFAULT_REGISTRY.to_string());
    let options = RegistryArgs::default().options(&global.root)?;
    if ::images::registry::logout(&options, &server)? {
        println!("Removing login credentials for {server}");
    } else {
        println!("Not logged in to {server}");
    }
    Ok(ExitCode::SUCCESS)
}
