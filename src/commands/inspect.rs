//! `bulkhead inspect IMAGE...`.

use std::process::ExitCode;

use anyhow::Context;

use super::{open_images, Global, RegistryArgs};

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Image names, ids or id prefixes.
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let images = open_images(global, &RegistryArgs::default())?;
    let mut documents = Vec::new();
    for name in &args.images {
        documents.push(
            images
                .inspect(name)
                .with_context(|| format!("failed to inspect {name}"))?,
        );
    }
    println!("{}", serde_json::to_string_pretty(&documents)?);
    Ok(ExitCode::SUCCESS)
}
