//! `bulkhead rmi IMAGE...`.

use std::process::ExitCode;

use anyhow::Context;

use super::{open_images, Global, RegistryArgs};

/// Arguments of `rmi`.
#[derive(clap::Args)]
pub struct Args {
    /// Image names, ids or id prefixes.
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let images = open_images(global, &RegistryArgs::default())?;
    // NOTE: containers are not consulted, so an image in use by a container can be removed;
    // its disk then disappears under the container's VM.
    for name in &args.images {
        let lines = images
            .remove(name)
            .with_context(|| format!("failed to remove image {name}"))?;
        for line in lines {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
