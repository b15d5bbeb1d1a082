//! `bulkhead tag SOURCE TARGET`.

use std::process::ExitCode;

use anyhow::Context;

use super::{open_images, Global, RegistryArgs};

/// Arguments of `tag`.
#[derive(clap::Args)]
pub struct Args {
    /// Image to tag: a name, id or id prefix.
    pub source: String,

    /// New name, as NAME[:TAG]; the tag defaults to `latest`.
    pub target: String,
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let target: ::images::Reference = args.target.parse()?;
    let images = open_images(global, &RegistryArgs::default())?;
    images
        .tag(&args.source, &target)
        .with_context(|| format!("failed to tag {} as {}", args.source, args.target))?;
    Ok(ExitCode::SUCCESS)
}
