//! Image names follow the distribution reference grammar, checked by one parser for every
//! command that names an image, before anything is written. Podman (Debian's, which
//! parses names with the containers/image copy of docker's reference package) is the
//! oracle for every verdict; a missing podman fails the test.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// (reference, valid by the grammar?) — each invalid one breaks exactly one rule.
const TABLE: &[(&str, bool)] = &[
    ("a", true),
    ("a/b", true),
    ("a/b/c/d", true),
    ("a-b", true),
    ("a--b", true),
    ("a-----b", true),
    ("a__b", true),
    ("a_b.c", true),
    ("a.b/c", true),
    ("localhost/x", true),
    ("localhost:5000/x", true),
    ("exa-mple.com/x", true),
    ("Example.com/x", true),
    ("EXAMPLE:5000/x", true),
    ("1.2.3.4:80/x", true),
    ("ex.com:5000/a/b:t", true),
    ("A.b/c:T", true),
    ("x:Tag_1", true),
    ("x:_t", true),
    ("x:1.0-rc.2", true),
    ("a:b", true),
    // a first component that is a valid path is a path, whatever it looks like
    ("a_b.c/x", true),
    // path components: lowercase alphanumerics joined by one separator
    ("Foo", false),
    ("Foo/bar", false),
    ("foo/Bar", false),
    ("Localhost/x", false),
    ("a..b", false),
    ("a___b", false),
    ("a_.b", false),
    ("a_-b", false),
    ("-a", false),
    ("a-", false),
    ("a b", false),
    ("a/b!", false),
    ("ünïcode", false),
    // '/' separation
    ("a//b", false),
    ("a/", false),
    ("/a", false),
    ("", false),
    // hosts and ports
    ("-ex.com/x", false),
    ("ex-.com/x", false),
    ("h.com:80x/y", false),
    ("h.com:/y", false),
    ("h:/x", false),
    ("[::1]:5000/x", false),
    ("[::1]/x", false),
    // tags
    ("a:", false),
    ("a:b:c", false),
    ("x:.t", false),
    ("x:-t", false),
    ("x:t!", false),
    // a digest identifies content; it cannot name a new image
    (
        "a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        false,
    ),
    ("a@sha256:0123", false),
];

fn podman_accepts(dir: &Path, name: &str) -> bool {
    let root = dir.join("podman");
    let args = |extra: &[&str]| {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(root.join("storage"))
            .arg("--runroot")
            .arg(root.join("run"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .args(extra);
        c
    };
    if !root.exists() {
        fs::create_dir_all(&root).unwrap();
        let empty = dir.join("empty.tar");
        fs::write(&empty, [0u8; 1024]).unwrap();
        let o = args(&["import", empty.to_str().unwrap(), "base:1"])
            .output()
            .unwrap_or_else(|e| panic!("podman cannot run ({e}): apt-get install podman"));
        assert!(
            o.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    args(&["tag", "--", "base:1", name])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn names_follow_the_reference_grammar() {
    let env = Env::new();
    let rootfs = env.path("rootfs");
    write(&rootfs.join("f"), "x\n");
    let src = rootfs.to_str().unwrap();
    let mut mismatches = Vec::new();
    for (name, valid) in TABLE {
        let p = podman_accepts(env.dir.path(), name);
        if p != *valid {
            mismatches.push(format!("podman says {p} for {name:?}"));
        }
        if *valid {
            let id = env.ok(&["import", src, name]);
            // The same text finds it again.
            assert_eq!(
                env.json(&["inspect", name])["image"]["id"],
                id.as_str(),
                "{name}"
            );
        } else {
            let before = store_state(&env.root);
            let o = env.run(&["import", "--", src, name]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{name:?} should be refused");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert!(
                err.contains("invalid image name") || err.contains("invalid tag"),
                "{name:?}: {err}"
            );
            // The message carries the rule, so the user can fix the name.
            assert!(
                err.contains("names are [HOST[:PORT]/]COMPONENT")
                    || err.contains("a tag is 1 to 128")
                    || err.contains("cannot name an image"),
                "{name:?}: {err}"
            );
            assert_eq!(store_state(&env.root), before, "{name:?} changed the store");
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:?}");

    // Lengths: at most 255 characters of name, 128 of tag. (Not asked of podman: it
    // counts the docker.io/library/ it adds to a name without a host.)
    let long = |n: usize| "a".repeat(n);
    env.ok(&["import", src, &format!("{}/{}", long(100), long(154))]);
    env.fails(
        &["import", src, &format!("{}/{}", long(100), long(155))],
        "more than 255",
    );
    env.ok(&["import", src, &format!("x:{}", long(128))]);
    env.fails(&["import", src, &format!("x:{}", long(129))], "invalid tag");
    env.fsck_clean();
}

#[test]
fn every_naming_command_checks_before_writing() {
    let env = Env::new();
    env.import_rootfs("base:1");
    let id = env.json(&["inspect", "base:1"])["image"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A digest is looked up as an image id, whatever name comes before it.
    assert_eq!(
        env.json(&["inspect", &format!("base@{id}")])["image"]["id"],
        id.as_str()
    );
    assert_eq!(
        env.json(&["inspect", &format!("other:2@{id}")])["image"]["id"],
        id.as_str()
    );
    env.fails(
        &["inspect", &format!("base@sha256:{}", "0".repeat(64))],
        "no such image",
    );

    // Mounting by digest names the container after the repository.
    let m2 = env.path("m2");
    fs::create_dir(&m2).unwrap();
    let _g2 = MountGuard(vec![m2.clone()]);
    let c = env.ok(&["mount", &format!("base@{id}"), m2.to_str().unwrap()]);
    assert!(c.starts_with("base-"), "{c}");
    env.ok(&["umount", &c]);
    env.ok(&["rm", &c]);

    let (mnt, _g) = env.mount_new("base:1", "m", "c1");
    write(&mnt.join("new"), "x\n");
    let before = store_state(&env.root);
    env.fails(&["commit", "c1", "Bad/Name"], "invalid image name");
    env.fails(&["commit", "c1", "ok:.bad"], "invalid tag");
    env.fails(
        &["commit", "c1", &format!("x@{id}")],
        "cannot name an image",
    );
    assert_eq!(store_state(&env.root), before);
    env.ok(&["umount", "c1"]);

    // run --commit with a bad name fails before the container exists, not after the
    // command ran.
    let before = store_state(&env.root);
    let marker = env.path("ran");
    env.fails(
        &[
            "run",
            "--commit",
            "Bad",
            "base:1",
            "/bin/sh",
            "-c",
            &format!("echo > {}", marker.display()),
        ],
        "invalid image name",
    );
    assert!(!marker.exists());
    assert_eq!(store_state(&env.root), before);
    env.fsck_clean();
}
