//! The image commands through the real binary: load from stdin, images, inspect, rmi, and
//! the exit status and cause chain of a failure.
//!
//! Containers that use an image are written as `run` writes them, without a VM: a directory
//! `containers/<id>/` with `config.json` and `state.json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bulkhead(root: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .env("BULKHEAD_ROOT", root)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds a busybox image with umoci in the OCI layout `dir/layout`, whose index names it only
/// by the tag `v1`. Returns the layout path.
fn busybox_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let image = format!("{}:v1", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bundle.join("rootfs/bin/sh")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "GREETING=hi",
    ]));
    layout
}

/// Builds the busybox image of [`busybox_layout`] and writes it as a `docker save` archive
/// with skopeo.
fn busybox_docker_archive(dir: &Path) -> Vec<u8> {
    let image = format!("{}:v1", busybox_layout(dir).display());
    let archive = dir.join("archive.tar");
    run(Command::new("skopeo")
        .arg("copy")
        .arg("--quiet")
        .arg(format!("oci:{image}"))
        .arg(format!("docker-archive:{}:cli/app:v1", archive.display())));
    std::fs::read(archive).unwrap()
}

#[test]
fn load_list_inspect_remove() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("state");
    let archive = busybox_docker_archive(work.path());

    let loaded = stdout(&bulkhead(&root, &["load"], Some(&archive)));
    assert_eq!(loaded.trim(), "Loaded image: cli/app:v1");

    let listing = stdout(&bulkhead(&root, &["images"], None));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(
        lines[0].starts_with("REPOSITORY") && lines[0].contains("IMAGE ID"),
        "{listing}"
    );
    assert!(
        lines[1].starts_with("cli/app") && lines[1].contains("v1"),
        "{listing}"
    );

    let ids = stdout(&bulkhead(&root, &["images", "-q"], None));
    let id = ids.trim();
    assert_eq!(id.len(), 12, "{ids}");

    let inspected: serde_json::Value =
        serde_json::from_str(&stdout(&bulkhead(&root, &["inspect", "cli/app:v1"], None))).unwrap();
    let image = &inspected[0];
    assert!(image["Id"]
        .as_str()
        .unwrap()
        .starts_with(&format!("sha256:{id}")));
    assert_eq!(image["Config"]["Cmd"], serde_json::json!(["/bin/sh"]));
    assert!(image["Config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("GREETING=hi")));
    assert_eq!(image["Layers"].as_array().unwrap().len(), 1);
    let disk = image["Disk"].as_str().unwrap();
    assert!(Path::new(disk).starts_with(&root), "{disk}");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    let removed = stdout(&bulkhead(&root, &["rmi", id], None));
    assert!(
        removed.contains("Untagged: docker.io/cli/app:v1"),
        "{removed}"
    );
    assert!(removed.contains("Deleted: sha256:"), "{removed}");
    assert_eq!(stdout(&bulkhead(&root, &["images", "-q"], None)), "");
    assert_eq!(std::fs::read_dir(root.join("rootfs")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn failure_exits_125_with_cause_chain() {
    let work = tempfile::tempdir().unwrap();
    let output = bulkhead(work.path(), &["inspect", "nosuch"], None);
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"bulkhead: failed to inspect nosuch"),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim() == "caused by: no such image: nosuch"),
        "{stderr}"
    );

    let output = bulkhead(work.path(), &["pull", "Not/A:valid:ref"], None);
    assert_eq!(output.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid reference"));
}

fn inspect(root: &Path, name: &str) -> serde_json::Value {
    let output = stdout(&bulkhead(root, &["inspect", name], None));
    let mut inspected: serde_json::Value = serde_json::from_str(&output).unwrap();
    inspected[0].take()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Writes the `config.json` and `state.json` of an exited container created from `image`, in
/// the format of `src/container/state.rs`. Returns the short id.
fn exited_container(root: &Path, id_seed: u8, image: &serde_json::Value) -> String {
    let id = format!("{id_seed:02x}").repeat(32);
    let dir = root.join("containers").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "name": format!("c{id_seed}"),
        "image": image["RepoTags"][0],
        "image_id": image["Id"],
        "image_disk": image["Disk"],
        "argv": ["/bin/sh"],
        "env": [],
        "working_dir": "",
        "user": "",
        "tty": false,
        "interactive": false,
        "ports": [],
        "cpus": 1,
        "memory_mib": 128,
        "auto_remove": false,
        "stop_signal": 15,
        "created": id_seed,
    });
    let state = serde_json::json!({
        "status": "exited",
        "supervisor_pid": null,
        "vmm_pid": null,
        "started": 1,
        "finished": 2,
        "exit_code": 0,
        "error": null,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    id[..12].to_string()
}

#[test]
fn rmi_refuses_image_in_use() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("state");
    stdout(&bulkhead(
        &root,
        &["load"],
        Some(&busybox_docker_archive(work.path())),
    ));
    let image = inspect(&root, "cli/app:v1");
    let id = image["Id"].as_str().unwrap().to_string();
    let disk = Path::new(image["Disk"].as_str().unwrap()).to_path_buf();
    let config_blob = root
        .join("blobs/sha256")
        .join(id.strip_prefix("sha256:").unwrap());
    let short_id = exited_container(&root, 0xab, &image);

    for name in ["cli/app:v1", &id[7..19]] {
        let output = bulkhead(&root, &["rmi", name], None);
        assert_eq!(output.status.code(), Some(1), "rmi {name}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr.trim(),
            format!(
                "bulkhead: conflict: unable to remove image {name}: container {short_id} is \
                 using it; remove the container first (bulkhead rm {short_id}) or use rmi -f"
            )
        );
    }
    assert_eq!(inspect(&root, "cli/app:v1")["Id"], id.as_str());

    let removed = stdout(&bulkhead(&root, &["rmi", "-f", "cli/app:v1"], None));
    assert!(removed.contains(&format!("Deleted: {id}")), "{removed}");
    assert_eq!(stdout(&bulkhead(&root, &["images", "-q"], None)), "");
    assert!(
        disk.exists(),
        "the container's disk was removed with the image"
    );
    assert_eq!(
        dir_names(&root.join("blobs/sha256")),
        [config_blob.file_name().unwrap().to_string_lossy()],
        "only the container's image config stays"
    );

    assert_eq!(
        stdout(&bulkhead(&root, &["rm", &short_id], None)).trim(),
        short_id
    );
    assert_eq!(dir_names(&root.join("rootfs")), Vec::<String>::new());
    assert_eq!(dir_names(&root.join("blobs/sha256")), Vec::<String>::new());
}

#[test]
fn load_tag_only_layout_then_tag() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("state");
    let layout = busybox_layout(work.path());

    let output = bulkhead(&root, &["load", "-i", layout.to_str().unwrap()], None);
    let loaded = stdout(&output);
    let id = loaded
        .trim()
        .strip_prefix("Loaded image ID: sha256:")
        .unwrap_or_else(|| panic!("{loaded}"));
    let short_id = &id[..12];
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only by the tag \"v1\""), "{stderr}");
    assert!(
        stderr.contains(&format!("name it with: bulkhead tag {short_id} NAME:v1")),
        "{stderr}"
    );
    assert!(!stderr.contains("  "), "one space between words: {stderr}");
    let listing = stdout(&bulkhead(&root, &["images"], None));
    assert!(
        listing.lines().nth(1).unwrap().starts_with("<none>"),
        "{listing}"
    );

    assert_eq!(
        stdout(&bulkhead(&root, &["tag", short_id, "cli/named:v1"], None)),
        ""
    );
    assert_eq!(
        stdout(&bulkhead(&root, &["tag", "cli/named:v1", "other"], None)),
        ""
    );
    let image = inspect(&root, "other:latest");
    assert_eq!(image["Id"], format!("sha256:{id}"));
    assert_eq!(
        image["RepoTags"],
        serde_json::json!(["docker.io/cli/named:v1", "docker.io/library/other:latest"])
    );

    // Removing one of two tags deletes nothing, so a container using the image is no conflict.
    exited_container(&root, 0xcd, &image);
    assert_eq!(
        stdout(&bulkhead(&root, &["rmi", "other"], None)).trim(),
        "Untagged: docker.io/library/other:latest"
    );
    assert_eq!(
        inspect(&root, short_id)["RepoTags"],
        serde_json::json!(["docker.io/cli/named:v1"])
    );

    let digest_target = format!("cli/named@sha256:{id}");
    let failures = [
        (
            ["tag", short_id, &digest_target],
            "a digest reference cannot be a tag",
        ),
        (["tag", "nosuch", "cli/x:1"], "no such image: nosuch"),
        (["tag", short_id, "Bad:Name"], "invalid reference"),
    ];
    for (args, message) in failures {
        let output = bulkhead(&root, &args, None);
        assert_eq!(output.status.code(), Some(125), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
