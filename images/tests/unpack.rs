//! Layer application edge cases, applied to a real directory (run as root: the tests create
//! device nodes and set owners) and then built into an ext4 disk checked with debugfs.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::{assert_fsck_clean, debugfs, layer, Compress, Entry};
use images::unpack::{self, apply_layer};
use images::Digest;
use tar::EntryType;

/// Applies each layer in order to a fresh root inside a fresh temporary directory.
fn apply_all(layers: &[Vec<u8>]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    unpack::create_root(&root).unwrap();
    for (i, tar) in layers.iter().enumerate() {
        apply_layer(&root, tar.as_slice(), Some(&Digest::of(tar)))
            .unwrap_or_else(|e| panic!("layer {i}: {e:?}"));
    }
    (dir, root)
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn exists(root: &Path, path: &str) -> bool {
    fs::symlink_metadata(root.join(path)).is_ok()
}

#[test]
fn whiteout_hides_lower_file() {
    let lower = layer(&[
        Entry::dir("a"),
        Entry::file("a/f1", "1"),
        Entry::file("a/f2", "2"),
    ]);
    let upper = layer(&[Entry::whiteout("a", "f1")]);
    let (_dir, root) = apply_all(&[lower, upper]);
    assert!(!exists(&root, "a/f1"));
    assert_eq!(read(&root, "a/f2"), "2");
    assert!(!exists(&root, "a/.wh.f1"));
}

#[test]
fn whiteout_removes_lower_directory() {
    let lower = layer(&[
        Entry::dir("d"),
        Entry::dir("d/sub"),
        Entry::file("d/sub/x", "x"),
    ]);
    let upper = layer(&[Entry::whiteout("", "d")]);
    let (_dir, root) = apply_all(&[lower, upper]);
    assert!(!exists(&root, "d"));
}

#[test]
fn opaque_after_siblings_keeps_same_layer() {
    let lower = layer(&[
        Entry::dir("d"),
        Entry::file("d/old", "old"),
        Entry::dir("d/lowerdir"),
        Entry::file("d/lowerdir/x", "x"),
        Entry::dir("d/both"),
        Entry::file("d/both/lower", "lower"),
    ]);
    // The opaque marker comes after this layer's own entries of the directory.
    let upper = layer(&[
        Entry::dir("d"),
        Entry::file("d/new", "new"),
        Entry::file("d/both/upper", "upper"),
        Entry::opaque("d"),
    ]);
    let (_dir, root) = apply_all(&[lower, upper]);
    assert_eq!(read(&root, "d/new"), "new");
    assert_eq!(read(&root, "d/both/upper"), "upper");
    assert!(!exists(&root, "d/old"));
    assert!(!exists(&root, "d/lowerdir"));
    assert!(!exists(&root, "d/both/lower"));
    assert!(!exists(&root, "d/.wh..wh..opq"));
}

#[test]
fn opaque_before_siblings() {
    let lower = layer(&[Entry::dir("d"), Entry::file("d/old", "old")]);
    let upper = layer(&[
        Entry::dir("d"),
        Entry::opaque("d"),
        Entry::file("d/new", "new"),
    ]);
    let (_dir, root) = apply_all(&[lower, upper]);
    assert!(!exists(&root, "d/old"));
    assert_eq!(read(&root, "d/new"), "new");
}

#[test]
fn whiteout_after_same_layer_file_keeps_it() {
    let lower = layer(&[Entry::file("x", "lower")]);
    let upper = layer(&[Entry::file("x", "upper"), Entry::whiteout("", "x")]);
    let (_dir, root) = apply_all(&[lower, upper]);
    assert_eq!(read(&root, "x"), "upper");
}

#[test]
fn hard_link_to_lower_layer_file() {
    let lower = layer(&[Entry::file("f", "one")]);
    let upper = layer(&[Entry::hard_link("g", "f")]);
    let (_dir, root) = apply_all(&[lower, upper]);
    let f = fs::metadata(root.join("f")).unwrap();
    let g = fs::metadata(root.join("g")).unwrap();
    assert_eq!(f.ino(), g.ino());
    assert_eq!(f.nlink(), 2);
}

#[test]
fn hard_link_with_missing_parents() {
    let tar = layer(&[Entry::file("f", "one"), Entry::hard_link("deep/er/g", "f")]);
    let (_dir, root) = apply_all(&[tar]);
    assert_eq!(read(&root, "deep/er/g"), "one");
    assert_eq!(
        fs::metadata(root.join("deep/er/g")).unwrap().ino(),
        fs::metadata(root.join("f")).unwrap().ino()
    );
}

#[test]
fn hard_link_replaces_existing_file() {
    let lower = layer(&[Entry::file("f", "target"), Entry::file("g", "replaced")]);
    let upper = layer(&[Entry::hard_link("g", "f")]);
    let (_dir, root) = apply_all(&[lower, upper]);
    assert_eq!(read(&root, "g"), "target");
    assert_eq!(
        fs::metadata(root.join("g")).unwrap().ino(),
        fs::metadata(root.join("f")).unwrap().ino()
    );
}

#[test]
fn whiteout_of_linked_name_keeps_other() {
    let lower = layer(&[Entry::file("f", "shared"), Entry::hard_link("g", "f")]);
    let upper = layer(&[Entry::whiteout("", "f")]);
    let (_dir, root) = apply_all(&[lower, upper]);
    assert!(!exists(&root, "f"));
    assert_eq!(read(&root, "g"), "shared");
    assert_eq!(fs::metadata(root.join("g")).unwrap().nlink(), 1);
}

#[test]
fn rewriting_linked_file_spares_other_name() {
    let lower = layer(&[Entry::file("f", "old"), Entry::hard_link("g", "f")]);
    let upper = layer(&[Entry::file("f", "new")]);
    let (_dir, root) = apply_all(&[lower, upper]);
    assert_eq!(read(&root, "f"), "new");
    assert_eq!(read(&root, "g"), "old");
}

#[test]
fn file_replaces_directory_and_back() {
    let lower = layer(&[
        Entry::dir("p"),
        Entry::file("p/x", "x"),
        Entry::file("q", "q"),
    ]);
    let upper = layer(&[
        Entry::file("p", "now a file"),
        Entry::dir("q"),
        Entry::file("q/y", "y"),
    ]);
    let (_dir, root) = apply_all(&[lower, upper]);
    assert_eq!(read(&root, "p"), "now a file");
    assert_eq!(read(&root, "q/y"), "y");
}

#[test]
fn symlinks_are_stored_verbatim() {
    let tar = layer(&[
        Entry::symlink("abs", "/etc/passwd"),
        Entry::symlink("rel", "../../../x"),
        Entry::symlink("dangling", "nowhere"),
    ]);
    let (_dir, root) = apply_all(&[tar]);
    for (name, target) in [
        ("abs", "/etc/passwd"),
        ("rel", "../../../x"),
        ("dangling", "nowhere"),
    ] {
        assert_eq!(
            fs::read_link(root.join(name)).unwrap(),
            Path::new(target),
            "{name}"
        );
    }
}

#[test]
fn names_are_normalised() {
    let tar = layer(&[
        Entry::file("/abs/file", "a"),
        Entry::file("./rel/file", "r"),
        Entry::file("x/./y//z", "z"),
    ]);
    let (_dir, root) = apply_all(&[tar]);
    assert_eq!(read(&root, "abs/file"), "a");
    assert_eq!(read(&root, "rel/file"), "r");
    assert_eq!(read(&root, "x/y/z"), "z");
}

#[test]
fn symlink_parents_stay_inside_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    unpack::create_root(&root).unwrap();

    // Each trick points a directory symlink at or above the host root, then writes through it.
    let tricks = layer(&[
        Entry::symlink("abs", "/"),
        Entry::symlink("up", "../../../../../../../.."),
        Entry::symlink("uprel", "../"),
    ]);
    let writes = layer(&[
        Entry::file("abs/bulkhead-escape-1", "1"),
        Entry::file("up/bulkhead-escape-2", "2"),
        Entry::file("uprel/bulkhead-escape-3", "3"),
        Entry::hard_link("up/bulkhead-escape-4", "abs/bulkhead-escape-1"),
    ]);
    apply_layer(&root, tricks.as_slice(), None).unwrap();
    apply_layer(&root, writes.as_slice(), None).unwrap();

    // Resolved as in a chroot, every write lands in the staging root itself.
    for i in 1..=4 {
        let name = format!("bulkhead-escape-{i}");
        assert!(
            !Path::new("/").join(&name).exists(),
            "{name} written to the host root"
        );
        assert!(
            !dir.path().join(&name).exists(),
            "{name} written beside the staging root"
        );
        assert!(
            root.join(&name).exists(),
            "{name} missing in the staging root"
        );
    }
    assert_eq!(
        fs::read_link(root.join("abs")).unwrap(),
        Path::new("/"),
        "the symlink stays as written"
    );
}

#[test]
fn dangling_symlink_parent_fails_inside_root() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let root = dir.path().join("root");
    unpack::create_root(&root).unwrap();

    // The target exists on the host but not inside the root.
    let tar = layer(&[
        Entry::symlink("link", outside.to_str().unwrap()),
        Entry::file("link/pwned", "x"),
    ]);
    let result = apply_layer(&root, tar.as_slice(), None);
    assert!(
        matches!(result, Err(unpack::Error::Entry { .. })),
        "{result:?}"
    );
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "a layer wrote outside the root"
    );
}

#[test]
fn dotdot_names_are_rejected() {
    for (i, entry) in [
        Entry::file("../escape", "x"),
        Entry::file("a/../../escape", "x"),
        Entry::hard_link("h", "../../etc/passwd"),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("deep/root");
        unpack::create_root(&root).unwrap();
        let result = apply_layer(&root, layer(&[entry]).as_slice(), None);
        assert!(
            matches!(result, Err(unpack::Error::Escape(_))),
            "case {i}: {result:?}"
        );
        assert!(!dir.path().join("deep/escape").exists(), "case {i}");
        assert!(!dir.path().join("escape").exists(), "case {i}");
    }
}

#[test]
fn hard_link_to_missing_target_fails() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    unpack::create_root(&root).unwrap();
    let result = apply_layer(
        &root,
        layer(&[Entry::hard_link("h", "missing")]).as_slice(),
        None,
    );
    assert!(
        matches!(result, Err(unpack::Error::LinkTarget { .. })),
        "{result:?}"
    );
}

#[test]
fn diff_id_mismatch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    unpack::create_root(&root).unwrap();
    let tar = layer(&[Entry::file("f", "x")]);
    let wrong = Digest::of(b"something else");
    let result = apply_layer(&root, tar.as_slice(), Some(&wrong));
    assert!(
        matches!(result, Err(unpack::Error::DiffIdMismatch { .. })),
        "{result:?}"
    );
}

#[test]
fn layer_stream_ends() {
    let big = "b".repeat(600);
    let tar = layer(&[Entry::file("a", "hello\n"), Entry::file("b", &big)]);
    // Offsets in `tar`: header a at 0, data a at 512..518, header b at 1024, data b at
    // 1536..2136, padding to 2560, then two zero blocks to 3584.
    assert_eq!(tar.len(), 3584);
    assert_eq!(&tar[512..518], b"hello\n");
    assert_eq!(&tar[1536..2136], big.as_bytes());

    // (length the stream is cut to, files expected, or None for an error)
    let cases: [(usize, Option<&[&str]>); 11] = [
        (3584, Some(&["a", "b"])),
        (3072, Some(&["a", "b"])), // one zero block
        (2560, Some(&["a", "b"])), // no zero block
        (2136, Some(&["a", "b"])), // no padding either, as umoci 0.4.7 insert writes
        (2300, Some(&["a", "b"])), // part of the padding
        (1024, Some(&["a"])),
        (518, Some(&["a"])),
        (0, Some(&[])),
        (1124, None), // inside header b
        (1546, None), // inside data b
        (515, None),  // inside data a
    ];
    for (i, (length, files)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        unpack::create_root(&root).unwrap();
        let stream = &tar[..length];
        let result = apply_layer(&root, stream, Some(&Digest::of(stream)));
        match files {
            Some(files) => {
                let stats = result.unwrap_or_else(|e| panic!("case {i} ({length}): {e:?}"));
                assert_eq!(stats.entries, files.len() as u64, "case {i}");
                assert_eq!(stats.diff_id, Digest::of(stream), "case {i}");
                for name in files {
                    let expected = if *name == "a" { "hello\n" } else { &big };
                    assert_eq!(read(&root, name), expected, "case {i}");
                }
            }
            None => assert!(result.is_err(), "case {i} ({length}): {result:?}"),
        }
    }
}

#[test]
fn compressed_and_empty_layers() {
    let tar = layer(&[Entry::file("f", "content")]);
    let empty = layer(&[]);
    for how in [Compress::None, Compress::Gzip, Compress::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        unpack::create_root(&root).unwrap();
        let blob = common::compress(&tar, how);
        let stats = apply_layer(&root, blob.as_slice(), Some(&Digest::of(&tar))).unwrap();
        assert_eq!(stats.diff_id, Digest::of(&tar), "{how:?}");
        assert_eq!(read(&root, "f"), "content", "{how:?}");

        let blob = common::compress(&empty, how);
        let stats = apply_layer(&root, blob.as_slice(), Some(&Digest::of(&empty))).unwrap();
        assert_eq!(stats.entries, 0, "{how:?}");
    }
    // A 0-byte blob is an empty layer too.
    let dir = tempfile::tempdir().unwrap();
    let stats = apply_layer(dir.path(), &b""[..], Some(&Digest::of(b""))).unwrap();
    assert_eq!(stats.entries, 0);
}

/// The metadata cases, checked on the staging tree and again on the built ext4 disk.
#[test]
fn metadata_survives_unpack_and_disk() {
    let capability =
        b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let long_name = format!("long/{}/end", "n".repeat(150));
    let odd_name = "odd dir/name with\nnewline and spaces";
    let tar = layer(&[
        Entry::file("setuid", "#!").mode(0o4755),
        Entry::dir("setgid").mode(0o2775),
        Entry::dir("sticky").mode(0o1777),
        Entry::file("owned", "o").owner(100_000, 100_001),
        Entry::symlink("owned-link", "owned").owner(200_000, 200_001),
        Entry::file("dated", "d").mtime(1_234_567_890),
        Entry::file("cap", "c")
            .xattr("security.capability", capability)
            .xattr("user.note", b"hello"),
        Entry::device("null", EntryType::Char, 1, 3, 0o666),
        Entry::device("loop9", EntryType::Block, 7, 9, 0o660),
        Entry::device("fifo", EntryType::Fifo, 0, 0, 0o600),
        Entry::file(&long_name, "long"),
        Entry::file(odd_name, "odd"),
    ]);
    let (dir, root) = apply_all(&[tar]);

    let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
    assert_eq!(meta("setuid").mode() & 0o7777, 0o4755);
    assert_eq!(meta("setgid").mode() & 0o7777, 0o2775);
    assert_eq!(meta("sticky").mode() & 0o7777, 0o1777);
    assert_eq!(
        (meta("owned").uid(), meta("owned").gid()),
        (100_000, 100_001)
    );
    assert_eq!(
        (meta("owned-link").uid(), meta("owned-link").gid()),
        (200_000, 200_001)
    );
    assert_eq!(meta("dated").mtime(), 1_234_567_890);
    assert!(meta("null").file_type().is_char_device());
    assert_eq!(meta("null").rdev(), rustix::fs::makedev(1, 3));
    assert!(meta("loop9").file_type().is_block_device());
    assert!(meta("fifo").file_type().is_fifo());
    assert_eq!(read(&root, &long_name), "long");
    assert_eq!(read(&root, odd_name), "odd");
    let mut value = [0u8; 64];
    let n = rustix::fs::lgetxattr(root.join("cap"), "security.capability", &mut value).unwrap();
    assert_eq!(&value[..n], capability);

    let disk = dir.path().join("disk.ext4");
    images::rootfs::build(&root, &disk).unwrap();
    assert_fsck_clean(&disk);

    let stat = |p: &str| debugfs(&disk, &format!("stat \"/{p}\""));
    assert!(
        stat("setuid").contains("Mode:  04755"),
        "{}",
        stat("setuid")
    );
    assert!(
        stat("setgid").contains("Mode:  02775"),
        "{}",
        stat("setgid")
    );
    assert!(
        stat("sticky").contains("Mode:  01777"),
        "{}",
        stat("sticky")
    );
    assert!(
        stat("owned").contains("User: 100000   Group: 100001"),
        "{}",
        stat("owned")
    );
    assert!(
        stat("owned-link").contains("User: 200000   Group: 200001"),
        "{}",
        stat("owned-link")
    );
    assert!(
        stat("dated").contains("mtime: 0x499602d2"),
        "{}",
        stat("dated")
    );
    assert!(
        stat("null").contains("Type: character special")
            && stat("null").contains("Device major/minor number: 01:03"),
        "{}",
        stat("null")
    );
    assert!(
        stat("loop9").contains("Type: block special"),
        "{}",
        stat("loop9")
    );
    assert!(stat("fifo").contains("Type: FIFO"), "{}", stat("fifo"));
    let attributes = debugfs(&disk, "ea_list /cap");
    assert!(
        attributes.contains("security.capability (20)"),
        "{attributes}"
    );
    assert!(
        attributes.contains("user.note (5) = \"hello\""),
        "{attributes}"
    );
    let listing = debugfs(&disk, &format!("cat \"/{long_name}\""));
    assert_eq!(listing, "long");
    for required in ["proc", "sys", "dev", "tmp", "etc", "run"] {
        assert!(
            stat(required).contains("Type: directory"),
            "/{required} missing"
        );
    }
    assert!(stat("tmp").contains("Mode:  01777"));
}

#[test]
fn hundred_thousand_files_in_one_layer() {
    let mut entries = vec![];
    for d in 0..100 {
        entries.push(Entry::dir(&format!("d{d}")));
        for f in 0..1000 {
            entries.push(Entry::file(&format!("d{d}/f{f}"), "x"));
        }
    }
    let started = std::time::Instant::now();
    let tar = layer(&entries);
    eprintln!("built tar in {:?}", started.elapsed());
    let (dir, root) = apply_all(&[tar]);
    eprintln!("applied in {:?}", started.elapsed());
    assert_eq!(fs::read_dir(root.join("d99")).unwrap().count(), 1000);

    let disk = dir.path().join("disk.ext4");
    let usage = images::rootfs::build(&root, &disk).unwrap();
    eprintln!("built disk in {:?}", started.elapsed());
    assert!(usage.inodes >= 100_100, "{usage:?}");
    assert_fsck_clean(&disk);
    assert!(debugfs(&disk, "stat /d99/f999").contains("Size: 1"));
}
