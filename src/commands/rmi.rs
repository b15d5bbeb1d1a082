//! `bulkhead rmi [-f] IMAGE...`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use images::store::{self, ImageUse};

use super::{open_images, Global, RegistryArgs};
use crate::container;

/// Arguments of `rmi`.
#[derive(clap::Args)]
pub struct Args {
    /// Remove the image even if a container uses it. The container keeps its root disk until
    /// it is removed.
    #[arg(short, long)]
    pub force: bool,

    /// Image names, ids or id prefixes.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Removes each image and reports each failure on stderr, as `docker rmi` does. Returns 1
/// when any image could not be removed.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let images = open_images(global, &RegistryArgs::default())?;
    let mut failed = false;
    for name in &args.images {
        // The uses are read again for each name, so that `rmi` and `rm` running beside this
        // one are seen as early as possible.
        // NOTE: `run` records its container only after it has resolved the image and its disk,
        // so an `rmi` in that window can still delete the disk of the container being created.
        let uses = container_image_uses(global)?;
        match images.remove_used(name, args.force, &uses) {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
            }
            Err(::images::Error::Store(store::Error::InUse { user, .. })) => {
                eprintln!(
                    "bulkhead: conflict: unable to remove image {name}: container {user} is \
                     using it; remove the container first (bulkhead rm {user}) or use rmi -f"
                );
                failed = true;
            }
            Err(error) => {
                let error = anyhow::Error::new(error).context(format!("failed to remove {name}"));
                eprintln!("bulkhead: {error:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Lists the image and root disk of every container, running or exited, for the image store's
/// removal and garbage collection.
pub fn container_image_uses(global: &Global) -> anyhow::Result<Vec<ImageUse>> {
    let containers = container::list(&global.root).context("failed to list the containers")?;
    Ok(containers
        .into_iter()
        .map(|(container, config)| ImageUse {
            user: container.short_id().to_owned(),
            image_id: config.image_id.parse().ok(),
            disk: PathBuf::from(config.image_disk),
        })
        .collect())
}

/// Removes the blobs and root disks that neither an image nor a remaining container needs.
pub fn collect_garbage(global: &Global) -> anyhow::Result<()> {
    let uses = container_image_uses(global)?;
    let images = open_images(global, &RegistryArgs::default())?;
    let removed = images
        .collect_garbage(&uses)
        .context("failed to remove unused image files")?;
    tracing::debug!(removed, "collected image garbage");
    Ok(())
}
