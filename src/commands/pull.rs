//! `bulkhead pull REF`.

use std::process::ExitCode;

use anyhow::Context;

use super::{open_images, Global, RegistryArgs};

/// Arguments of `pull`.
#[derive(clap::Args)]
pub struct Args {
    /// Image reference: [registry/]repository[:tag][@sha256:digest].
    pub reference: String,

    /// Print only the image id.
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let reference: ::images::Reference = args.reference.parse()?;
    let images = open_images(global, &args.registry)?;
    let progress: Box<dyn ::images::registry::Progress> = if args.quiet {
        Box::new(::images::registry::Silent)
    } else {
        ::images::registry::progress::for_stderr()
    };
    let record = images
        .pull(&reference, &*progress)
        .with_context(|| format!("failed to pull {reference}"))?;
    if args.quiet {
        println!("{}", record.id);
    } else {
        println!("{reference}");
    }
    Ok(ExitCode::SUCCESS)
}
