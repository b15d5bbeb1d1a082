//! `bulkhead load [-i FILE]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{open_images, Global, RegistryArgs};

/// Arguments of `load`.
#[derive(clap::Args)]
pub struct Args {
    /// `docker save` tarball, OCI layout tar, or OCI layout directory; stdin when absent.
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,

    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let images = open_images(global, &RegistryArgs::default())?;
    let (source, what) = match &args.input {
        Some(path) => (
            ::images::archive::Source::Path(path.clone()),
            path.display().to_string(),
        ),
        None => (
            ::images::archive::Source::Stream(Box::new(std::io::stdin().lock())),
            "stdin".to_string(),
        ),
    };
    let loaded = images
        .load(source)
        .with_context(|| format!("failed to load images from {what}"))?;
    if !args.quiet {
        for image in loaded {
            print_loaded(&image);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the lines `docker load` prints, plus how to name an image that the archive named only
/// by a tag.
fn print_loaded(image: &::images::archive::LoadedImage) {
    let record = &image.record;
    if record.tags.is_empty() {
        println!("Loaded image ID: {}", record.id);
    }
    for tag in &record.tags {
        let familiar = tag.parse::<::images::Reference>().map_or(tag.clone(), |r| {
            format!("{}:{}", r.familiar_name(), r.tag.unwrap_or_default())
        });
        println!("Loaded image: {familiar}");
    }
    if let (Some(tag), true) = (&image.tag_only_ref_name, record.tags.is_empty()) {
        let short_id = &record.id.hex()[..12];
        eprintln!(
            "bulkhead: the OCI layout names image {short_id} only by the tag {tag:?}, which \
             has no repository, so it was loaded untagged; name it with: \
             bulkhead tag {short_id} NAME:{tag}"
        );
    }
}
