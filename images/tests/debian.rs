//! A Debian bookworm minbase tree from debootstrap, turned into an OCI image by umoci, pushed
//! with skopeo and pulled. debootstrap needs the Debian mirror; the tree is cached under
//! /var/cache/bulkhead/ so later runs skip it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_fsck_clean, debugfs, Registry};
use images::registry::{Options, Silent};
use images::{Images, Reference};

const CACHE: &str = "/var/cache/bulkhead/debian-bookworm-minbase";
const MIRROR: &str = "http://deb.debian.org/debian";

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Returns the cached minbase tree, running debootstrap first if the cache lacks it.
pub fn minbase_tree() -> PathBuf {
    let cache = PathBuf::from(CACHE);
    if cache.join("etc/debian_version").exists() {
        return cache;
    }
    let partial = cache.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).unwrap();
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&partial)
        .arg(MIRROR));
    std::fs::rename(&partial, &cache).unwrap();
    cache
}

/// Builds an OCI layout with one layer holding `tree`, with umoci.
pub fn layout_from_tree(tree: &Path, layout: &Path) {
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    let bundle = layout.with_extension("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", tree.display()))
        .arg(&rootfs));
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args(["config", "--image", &image, "--config.cmd", "/bin/bash"]));
    std::fs::remove_dir_all(&bundle).unwrap();
}

#[test]
fn debian_minbase_pull_builds_bootable_tree() {
    let tree = minbase_tree();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    layout_from_tree(&tree, &layout);

    let registry = Registry::start("");
    registry.push_layout(&layout, "latest", "debian:minbase");

    let state = tempfile::tempdir().unwrap();
    let images = Images::open(
        state.path(),
        Options {
            auth_file: None,
            ..Options::default()
        },
    )
    .unwrap();
    let reference: Reference = format!("{}/debian:minbase", registry.host())
        .parse()
        .unwrap();
    let record = images.pull(&reference, &Silent).unwrap();
    let disk = images
        .disk(&images.get(&record.id.to_string()).unwrap())
        .unwrap();

    assert_fsck_clean(&disk);
    assert_eq!(
        debugfs(&disk, "cat /etc/debian_version").trim(),
        std::fs::read_to_string(tree.join("etc/debian_version"))
            .unwrap()
            .trim()
    );
    assert!(
        debugfs(&disk, "stat /bin").contains("Type: symlink"),
        "bookworm has merged /usr"
    );
    assert!(debugfs(&disk, "stat /usr/bin/bash").contains("Mode:  0755"));
    // su is setuid root in minbase.
    assert!(debugfs(&disk, "stat /usr/bin/su").contains("Mode:  04755"));
}
