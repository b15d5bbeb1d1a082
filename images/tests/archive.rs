//! `docker save` tarballs and OCI layouts (directory and tar).

mod common;

use std::fs;
use std::path::Path;

use common::{assert_fsck_clean, debugfs, layer, write_layout, Compress, Entry};
use images::archive::Source;
use images::registry::Options;
use images::{Digest, Images};

fn open_images(root: &Path) -> Images {
    Images::open(
        root,
        Options {
            auth_file: None,
            ..Options::default()
        },
    )
    .unwrap()
}

fn config(diff_ids: &[Digest], cmd: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": [cmd]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn append(builder: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, name, data).unwrap();
}

/// Builds a `docker save` archive with two images sharing a layer, a 0-byte layer, and a layer
/// repeated through a symlink as Docker writes it.
fn docker_save_archive() -> (Vec<u8>, Digest, Digest) {
    let base = layer(&[Entry::dir("bin"), Entry::file("bin/tool", "tool")]);
    let top = layer(&[Entry::file("etc/app", "app")]);
    let empty: Vec<u8> = Vec::new();
    let first_diffs = [
        Digest::of(&base),
        Digest::of(&empty),
        Digest::of(&base),
        Digest::of(&top),
    ];
    let first_config = config(&first_diffs, "/bin/tool");
    let second_config = config(&[Digest::of(&base)], "/bin/other");

    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, "aaa/layer.tar", &base);
    append(&mut builder, "bbb/layer.tar", &empty);
    append(&mut builder, "ddd/layer.tar", &top);
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    builder
        .append_link(&mut link, "ccc/layer.tar", "../aaa/layer.tar")
        .unwrap();
    let first_id = Digest::of(&first_config);
    let second_id = Digest::of(&second_config);
    append(
        &mut builder,
        &format!("{}.json", first_id.hex()),
        &first_config,
    );
    append(
        &mut builder,
        &format!("{}.json", second_id.hex()),
        &second_config,
    );
    let manifest = serde_json::json!([
        {"Config": format!("{}.json", first_id.hex()), "RepoTags": ["app:v1", "example.com/team/app:latest"],
         "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar", "ddd/layer.tar"]},
        {"Config": format!("{}.json", second_id.hex()), "RepoTags": null, "Layers": ["aaa/layer.tar"]},
    ]);
    append(
        &mut builder,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    append(&mut builder, "repositories", br#"{"app":{"v1":"x"}}"#);
    (builder.into_inner().unwrap(), first_id, second_id)
}

#[test]
fn docker_save_with_two_images() {
    let (archive, first_id, second_id) = docker_save_archive();
    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let records = images
        .load(Source::Stream(Box::new(std::io::Cursor::new(archive))))
        .unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].record.id, first_id);
    assert_eq!(
        records[0].record.tags,
        vec![
            "docker.io/library/app:v1".to_string(),
            "example.com/team/app:latest".to_string()
        ]
    );
    assert_eq!(records[1].record.id, second_id);
    assert!(records[1].record.tags.is_empty());

    let first = images.get("app:v1").unwrap();
    let disk = images.disk(&first).unwrap();
    assert_fsck_clean(&disk);
    assert_eq!(debugfs(&disk, "cat /bin/tool"), "tool");
    assert_eq!(debugfs(&disk, "cat /etc/app"), "app");
    assert_eq!(
        images.runtime_config(&second_id.to_string()).unwrap().cmd,
        Some(vec!["/bin/other".to_string()])
    );

    // The shared layer is stored once: base, empty and top layers plus two configs and two
    // synthesised manifests.
    assert_eq!(
        fs::read_dir(state.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        7
    );
}

#[test]
fn oci_layout_directory_and_tar() {
    let layout = tempfile::tempdir().unwrap();
    let written = write_layout(
        layout.path(),
        "example.com/oci/app:2",
        &[
            (layer(&[Entry::file("hello", "oci")]), Compress::Zstd),
            (layer(&[]), Compress::Gzip),
        ],
    );

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let records = images
        .load(Source::Path(layout.path().to_path_buf()))
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record.id, written.config);
    assert_eq!(
        records[0].record.tags,
        vec!["example.com/oci/app:2".to_string()]
    );
    let disk = images
        .disk(&images.get("example.com/oci/app:2").unwrap())
        .unwrap();
    assert_eq!(debugfs(&disk, "cat /hello"), "oci");

    // The same layout as a tar file, loaded into another store.
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", layout.path()).unwrap();
    let tar_path = layout.path().with_extension("tar");
    fs::write(&tar_path, builder.into_inner().unwrap()).unwrap();
    let other = tempfile::tempdir().unwrap();
    let records = open_images(other.path())
        .load(Source::Path(tar_path.clone()))
        .unwrap();
    assert_eq!(records[0].record.id, written.config);
    fs::remove_file(tar_path).unwrap();
}

#[test]
fn tampered_layout_blob_is_rejected() {
    let layout = tempfile::tempdir().unwrap();
    let written = write_layout(
        layout.path(),
        "v1",
        &[(layer(&[Entry::file("f", "x")]), Compress::None)],
    );
    let blob = common::layout_blob(layout.path(), &written.layers[0]);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[600] ^= 1;
    fs::write(&blob, bytes).unwrap();

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let error = images
        .load(Source::Path(layout.path().to_path_buf()))
        .unwrap_err();
    assert!(format!("{error:?}").contains("DigestMismatch"), "{error:?}");
    assert!(images.list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(state.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(fs::read_dir(state.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn not_an_archive_is_rejected() {
    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, "readme.txt", b"hello");
    let error = images
        .load(Source::Stream(Box::new(std::io::Cursor::new(
            builder.into_inner().unwrap(),
        ))))
        .unwrap_err();
    assert!(
        error.to_string().contains("no manifest.json or index.json"),
        "{error}"
    );
}

/// Sets the annotations of the only entry of a layout's `index.json`.
fn set_index_annotations(layout: &Path, annotations: serde_json::Value) {
    let path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    index["manifests"][0]["annotations"] = annotations;
    fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn oci_layout_names() {
    let ref_name = "org.opencontainers.image.ref.name";
    let image_name = "io.containerd.image.name";
    // (annotations, expected tags, expected tag-only ref.name)
    let cases = [
        (
            serde_json::json!({ref_name: "example.com/a/b:v2"}),
            vec!["example.com/a/b:v2"],
            None,
        ),
        (
            serde_json::json!({ref_name: "latest"}),
            vec![],
            Some("latest"),
        ),
        (
            serde_json::json!({ref_name: "v1.0-rc"}),
            vec![],
            Some("v1.0-rc"),
        ),
        (
            serde_json::json!({ref_name: "latest", image_name: "docker.io/library/app:3"}),
            vec!["docker.io/library/app:3"],
            None,
        ),
        (
            serde_json::json!({image_name: "example.com/c:1"}),
            vec!["example.com/c:1"],
            None,
        ),
        (serde_json::json!({ref_name: "not a name"}), vec![], None),
        (serde_json::json!({}), vec![], None),
    ];
    for (i, (annotations, tags, tag_only)) in cases.into_iter().enumerate() {
        let layout = tempfile::tempdir().unwrap();
        write_layout(
            layout.path(),
            "unused",
            &[(layer(&[Entry::file("f", "x")]), Compress::None)],
        );
        set_index_annotations(layout.path(), annotations);

        let state = tempfile::tempdir().unwrap();
        let loaded = open_images(state.path())
            .load(Source::Path(layout.path().to_path_buf()))
            .unwrap();
        assert_eq!(loaded.len(), 1, "case {i}");
        assert_eq!(loaded[0].record.tags, tags, "case {i}");
        assert_eq!(loaded[0].tag_only_ref_name.as_deref(), tag_only, "case {i}");
    }
}

fn run(command: &mut std::process::Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// umoci 0.4.7 `insert` writes layers that end right after the last file's data, with neither
/// padding nor the two zero blocks.
#[test]
fn umoci_insert_layer_loads() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let image = format!("{}:v1", layout.display());
    let file = work.path().join("greeting");
    fs::write(&file, "hello\n").unwrap();
    run(std::process::Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(std::process::Command::new("umoci").args(["new", "--image", &image]));
    run(std::process::Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(&file)
        .arg("/greeting"));

    let state = tempfile::tempdir().unwrap();
    let images = open_images(state.path());
    let loaded = images.load(Source::Path(layout.clone())).unwrap();
    assert_eq!(loaded.len(), 1);
    let image = images.get(&loaded[0].record.id.to_string()).unwrap();
    let disk = images.disk(&image).unwrap();
    assert_fsck_clean(&disk);
    assert_eq!(debugfs(&disk, "cat /greeting"), "hello\n");
}
