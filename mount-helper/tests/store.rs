//! Store tests that need no mount: import, listings, canonical tars, gc, fsck, hostile
//! input, crash safety.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// (name, type, link target, data) of one raw tar entry.
type RawEntry<'a> = (&'a str, tar::EntryType, &'a str, &'a str);

fn raw_header(name: &[u8], ty: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    if let Some(u) = h.as_ustar_mut() {
        u.name[..name.len()].copy_from_slice(name);
    }
    h.set_entry_type(ty);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(1);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes a tar whose entries are (name, type, link target, data), names taken raw.
fn hostile_tar(path: &Path, entries: &[RawEntry]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, ty, link, data) in entries {
        let mut h = raw_header(name.as_bytes(), *ty, data.len() as u64);
        if !link.is_empty() {
            if let Some(u) = h.as_ustar_mut() {
                u.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
    }
    fs::write(path, b.into_inner().unwrap()).unwrap();
}

#[test]
fn import_listings_and_canonical_tar() {
    let env = Env::new();
    let rootfs = env.path("rootfs");
    make_rootfs(&rootfs);
    let id = env.ok(&["import", rootfs.to_str().unwrap(), "base:1"]);
    assert!(id.starts_with("sha256:"));

    let images = env.json(&["images", "--json"]);
    assert_eq!(images[0]["name"], "base");
    assert_eq!(images[0]["tag"], "1");
    let layers = env.json(&["layers", "--json"]);
    assert_eq!(layers.as_array().unwrap().len(), 1);
    let diff_id = layers[0]["diff_id"].as_str().unwrap().to_string();
    assert_eq!(layers[0]["images"], 1);

    // The layer tar hashes to the diff_id, and its size is the recorded one.
    let tar_path = env.path("layer.tar");
    env.ok(&["layer-tar", &diff_id, "-o", tar_path.to_str().unwrap()]);
    assert_eq!(sha256_file(&tar_path), diff_id);
    assert_eq!(
        fs::metadata(&tar_path).unwrap().len(),
        layers[0]["size"].as_u64().unwrap()
    );

    // The config is an OCI image config.
    let insp = env.json(&["inspect", "base:1"]);
    let cfg = &insp["image"]["config"];
    assert_eq!(cfg["rootfs"]["type"], "layers");
    assert_eq!(cfg["rootfs"]["diff_ids"][0], diff_id.as_str());
    assert_eq!(cfg["os"], "linux");
    assert!(cfg["history"][0]["created"].is_string());
    assert!(cfg["config"]["Env"].is_array());
    let hist = env.json(&["history", "base:1", "--json"]);
    assert_eq!(hist[0]["layer"], diff_id.as_str());

    // Same rootfs again (and as a tar, and gzipped): one layer, same diff_id.
    env.ok(&["import", rootfs.to_str().unwrap(), "base:2"]);
    env.ok(&["import", tar_path.to_str().unwrap(), "fromtar"]);
    let gz = env.path("layer.tar.gz");
    let mut enc =
        flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all(&fs::read(&tar_path).unwrap()).unwrap();
    enc.finish().unwrap();
    env.ok(&["import", gz.to_str().unwrap(), "fromgz:x"]);
    let layers = env.json(&["layers", "--json"]);
    assert_eq!(layers.as_array().unwrap().len(), 1, "{layers}");
    assert_eq!(layers[0]["images"], 4);

    // The imported tar extracts to the same tree.
    let ins = env.json(&["inspect", "fromtar"]);
    assert_eq!(
        ins["image"]["config"]["rootfs"]["diff_ids"][0],
        diff_id.as_str()
    );
    let stored = env.root.join("layers").join(&diff_id[7..]).join("diff");
    assert_eq!(snapshot(&stored), snapshot(&rootfs));
    assert_eq!(link_groups(&stored), link_groups(&rootfs));

    // The tar itself: sorted, hard link as a link, xattr as a PAX record, no private ones.
    let mut ar = tar::Archive::new(fs::File::open(&tar_path).unwrap());
    let mut names = Vec::new();
    let mut saw_link = false;
    let mut saw_xattr = false;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let n = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if e.header().entry_type() == tar::EntryType::Link {
            saw_link = true;
            assert_eq!(n, "etc/hostname.link");
        }
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                if x.key().unwrap() == "SCHILY.xattr.user.note" {
                    saw_xattr = true;
                }
            }
        }
        names.push(n);
    }
    assert!(saw_link && saw_xattr, "{names:?}");
    assert!(
        names.iter().any(|n| n.len() > 200),
        "long names survive: {names:?}"
    );
    assert_eq!(names[0], "bin/");

    env.fsck_clean();
}

#[test]
fn whiteouts_in_tar_import_and_round_trip() {
    let env = Env::new();
    let t = env.path("wh.tar");
    use tar::EntryType::*;
    hostile_tar(
        &t,
        &[
            ("etc/", Directory, "", ""),
            ("etc/.wh.gone", Regular, "", ""),
            ("var/", Directory, "", ""),
            ("var/.wh..wh..opq", Regular, "", ""),
            ("var/keep", Regular, "", "k"),
        ],
    );
    env.ok(&["import", t.to_str().unwrap(), "wh"]);
    let d = env.json(&["layers", "--json"])[0]["diff_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.path("again.tar");
    env.ok(&["layer-tar", &d, "-o", out.to_str().unwrap()]);
    let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "etc/",
            "etc/.wh.gone",
            "var/",
            "var/.wh..wh..opq",
            "var/keep"
        ]
    );
    // Stored in the daemon's encoding as root: a 0:0 char device and an opaque xattr.
    let layer = env.root.join("layers").join(&d[7..]).join("diff");
    let m = fs::symlink_metadata(layer.join("etc/gone")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(m.file_type().is_char_device() && m.rdev() == 0);
    let o = Command::new("getfattr")
        .args(["-n", "trusted.overlay.opaque", "--only-values"])
        .arg(layer.join("var"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "y");
}

#[test]
fn hostile_tars_are_refused_and_change_nothing() {
    let env = Env::new();
    env.import_rootfs("base");
    let before = store_state(&env.root);
    use tar::EntryType::*;
    let cases: Vec<(&str, Vec<RawEntry>, &str)> = vec![
        (
            "abs",
            vec![("/etc/passwd", Regular, "", "x")],
            "/etc/passwd",
        ),
        (
            "dotdot",
            vec![("a/../../escape", Regular, "", "x")],
            "a/../../escape",
        ),
        (
            "symlink",
            vec![
                ("link", Symlink, "/tmp", ""),
                ("link/evil", Regular, "", "x"),
            ],
            "link/evil",
        ),
        ("hardlink", vec![("h", Link, "../../etc/shadow", "")], "h"),
        ("hardlink-abs", vec![("h", Link, "/etc/shadow", "")], "h"),
        (
            "hardlink-via-symlink",
            vec![("s", Symlink, "/etc", ""), ("h", Link, "s/passwd", "")],
            "h",
        ),
        ("garbage", vec![], "not a readable tar"),
    ];
    for (name, entries, want) in cases {
        let t = env.path(&format!("{name}.tar"));
        if entries.is_empty() {
            fs::write(&t, vec![b'x'; 2000]).unwrap();
        } else {
            hostile_tar(&t, &entries);
        }
        let err = env.fails(&["import", t.to_str().unwrap(), "evil"], want);
        assert!(
            err.contains("refusing") || name == "garbage",
            "{name}: {err}"
        );
        assert_eq!(store_state(&env.root), before, "{name} changed the store");
    }
    assert!(!Path::new("/tmp/evil").exists());

    // Device nodes: refused for an unprivileged user.
    let t = env.path("dev.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = raw_header(b"dev/sda", tar::EntryType::Block, 0);
    h.set_device_major(8).unwrap();
    h.set_device_minor(0).unwrap();
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    fs::write(&t, b.into_inner().unwrap()).unwrap();
    let user_root = env.path("userstore");
    fs::create_dir(&user_root).unwrap();
    Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&user_root)
        .status()
        .unwrap();
    Command::new("chmod")
        .args(["755"])
        .arg(env.dir.path())
        .status()
        .unwrap();
    Command::new("chmod")
        .args(["644"])
        .arg(&t)
        .status()
        .unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(layerctl_bin())
        .arg("--root")
        .arg(&user_root)
        .args(["import", t.to_str().unwrap(), "dev"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("dev/sda") && err.contains("device nodes need root"),
        "{err}"
    );
}

#[test]
fn bad_names_and_records() {
    let env = Env::new();
    let rootfs = env.path("rootfs");
    make_rootfs(&rootfs);
    env.fails(&["import", env.path("nope").to_str().unwrap(), "x"], "nope");
    env.fails(
        &["import", rootfs.to_str().unwrap(), "Bad Name"],
        "invalid image name",
    );
    let id = env.ok(&["import", rootfs.to_str().unwrap(), "base"]);
    let before = store_state(&env.root);
    env.fails(&["history", "nosuch"], "no such image: nosuch");
    env.fails(&["inspect", "nosuch"], "no such image or container: nosuch");
    env.fails(&["rmi", "nosuch"], "no such image");
    env.fails(&["diff", "nosuch"], "no such container: nosuch");
    env.fails(&["commit", "nosuch", "x"], "no such container: nosuch");
    env.fails(&["rm", "nosuch"], "no such container: nosuch");
    env.fails(&["umount", "nosuch"], "no such container");
    env.fails(&["layer-tar", "sha256:abc"], "not a sha256 digest");
    let target = env.path("full");
    write(&target.join("x"), "x");
    env.fails(&["mount", "base", target.to_str().unwrap()], "not empty");
    env.fails(
        &["mount", "base", env.path("missing").to_str().unwrap()],
        "does not exist",
    );
    env.fails(&["mount", "nosuch", env.path("").to_str().unwrap()], "");
    assert_eq!(store_state(&env.root), before);

    // A corrupt image record: named, with the fix.
    let rec = env.root.join("images").join(format!("{}.json", &id[7..]));
    let good = fs::read(&rec).unwrap();
    fs::write(&rec, b"{not json").unwrap();
    let err = env.fails(&["history", "base"], "corrupt");
    assert!(err.contains(&id), "{err}");
    let o = env.run(&["fsck"]);
    assert_eq!(o.status.code(), Some(1));
    fs::write(&rec, &good).unwrap();

    // A missing layer: mount refuses, fsck reports it.
    let layer = env.json(&["layers", "--json"])[0]["diff_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ldir = env.root.join("layers").join(&layer[7..]);
    fs::rename(&ldir, env.path("moved")).unwrap();
    let m = env.path("m");
    fs::create_dir(&m).unwrap();
    env.fails(
        &["mount", "base", m.to_str().unwrap()],
        "is missing from the store",
    );
    assert_eq!(env.run(&["fsck"]).status.code(), Some(1));
    fs::rename(env.path("moved"), &ldir).unwrap();
    env.ok(&["fsck"]);

    // Damage inside a layer is found by re-hashing.
    fs::write(ldir.join("diff/etc/hostname"), "tampered\n").unwrap();
    let o = env.run(&["fsck"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("damaged"));
}

#[test]
fn rmi_and_gc() {
    let env = Env::new();
    let a = env.path("a");
    make_rootfs(&a);
    let b = env.path("b");
    make_rootfs(&b);
    write(&b.join("extra"), "b only");
    env.ok(&["import", a.to_str().unwrap(), "a"]);
    env.ok(&["import", b.to_str().unwrap(), "b"]);
    assert_eq!(env.json(&["layers", "--json"]).as_array().unwrap().len(), 2);
    let out = env.ok(&["rmi", "b"]);
    assert!(
        out.contains("Untagged: b:latest") && out.contains("Deleted"),
        "{out}"
    );
    let out = env.ok(&["gc"]);
    assert!(out.contains("deleted layer"), "{out}");
    assert_eq!(env.json(&["layers", "--json"]).as_array().unwrap().len(), 1);
    env.ok(&["fsck"]);
    let out = env.ok(&["gc"]);
    assert!(out.contains("freed 0B in 0 layer(s)"), "{out}");
}

/// Kills import at many moments; the store must stay fsck-clean with no half layer.
#[test]
fn kill_during_import_leaves_clean_store() {
    let env = Env::new();
    let rootfs = env.path("big");
    for i in 0..400 {
        write(
            &rootfs.join(format!("d{}/f{i}", i % 20)),
            &"x".repeat(i * 50),
        );
    }
    for (n, delay_ms) in [1u64, 5, 10, 20, 40, 80, 150, 300].iter().enumerate() {
        env.kill_after(
            &["import", rootfs.to_str().unwrap(), &format!("big:{n}")],
            Duration::from_millis(*delay_ms),
        );
        env.fsck_passes(&format!("after kill at {delay_ms}ms"));
        for l in env.json(&["layers", "--json"]).as_array().unwrap() {
            assert!(env
                .root
                .join("layers")
                .join(&l["diff_id"].as_str().unwrap()[7..])
                .join("layer.json")
                .is_file());
        }
    }
    // The temp area is cleared by the next writer.
    assert_eq!(fs::read_dir(env.root.join("tmp")).unwrap().count(), 0);
}

/// A committed image keeps the image it was made from (docker's parent chain): gc removes
/// the base only once nothing made from it is kept.
#[test]
fn gc_keeps_the_parents_of_kept_images() {
    let env = Env::new();
    let a = env.path("a");
    make_rootfs(&a);
    env.ok(&["import", a.to_str().unwrap(), "base"]);
    let base = env.ok(&["inspect", "base"]);
    let base_id = serde_json::from_str::<serde_json::Value>(&base).unwrap()["image"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    {
        let (m, _g) = env.mount_new("base", "m", "c");
        write(&m.join("new-file"), "child");
    }
    env.ok(&["commit", "c", "child"]);
    env.ok(&["rm", "c"]);
    env.ok(&["rmi", "base"]);
    env.ok(&["gc"]);
    // The unnamed base is still there: the child was made from it.
    let ids: Vec<String> = fs::read_dir(env.root.join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        ids.contains(&format!("{}.json", &base_id[7..])),
        "gc removed the parent of a kept image: {ids:?}"
    );
    env.ok(&["rmi", "child"]);
    let out = env.ok(&["gc"]);
    assert!(out.contains(&format!("deleted image {base_id}")), "{out}");
    assert_eq!(fs::read_dir(env.root.join("images")).unwrap().count(), 0);
    env.ok(&["fsck"]);
}
