//! `save` and `load`: formats, determinism, interop with skopeo, umoci and podman, a real
//! registry round trip, and hostile archives. The external tools come from Debian
//! (`apt-get install skopeo umoci podman docker-registry`, as .ci/run does); a missing tool
//! fails the test loudly rather than skipping it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A second layer with every kind of change a layer can carry: new, changed and deleted
/// files, a deleted and recreated directory (opaque), a renamed directory, hard links,
/// foreign owners, special modes.
const CHANGE: &str = "
printf 'new\\n' > etc/new
printf 'more\\n' >> etc/passwd
rm usr/share/doc/a.txt
rm -r var/lib/app
mkdir var/lib/app
printf 'fresh\\n' > var/lib/app/fresh
mv opt/tool opt/tool2
ln etc/new etc/new.hard
printf 'owned\\n' > etc/owned
chown 1234:5678 etc/owned
chmod 4750 etc/owned
mkdir -m 1777 tmp
";

/// Store with `multi:1`: the common rootfs plus the CHANGE layer, committed through a
/// real mount. Returns the image id.
fn build_image(env: &Env) -> String {
    env.import_rootfs("base:1");
    let (mnt, _g) = env.mount_new("base:1", "build-mnt", "build");
    sh(&mnt, CHANGE);
    env.ok(&["commit", "build", "multi:1", "-m", "change"]);
    env.ok(&["umount", "build"]);
    env.ok(&["rm", "build"]);
    env.ok(&["inspect", "multi:1"]);
    env.json(&["inspect", "multi:1"])["image"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The tree of `image` as a read-only layerctl mount shows it.
fn mounted(env: &Env, image: &str) -> Tree {
    let mnt = env.path(&format!("mnt-{}", image.replace([':', '/'], "_")));
    fs::create_dir_all(&mnt).unwrap();
    let _g = MountGuard(vec![mnt.clone()]);
    let name = env.ok(&["mount", image, mnt.to_str().unwrap(), "--read-only"]);
    let t = tree(&mnt);
    env.ok(&["umount", &name]);
    env.ok(&["rm", &name]);
    t
}

/// The tree of `multi:1` really carries the second layer's changes (so that comparing
/// trees below compares something).
fn sane(t: &Tree) {
    let (files, links) = t;
    assert!(files["etc/owned"].contains(" 4750 1234:5678 "), "{files:?}");
    assert!(files["tmp"].starts_with("dir 1777 "), "{files:?}");
    assert!(files["etc/passwd"].contains("user.note"), "{files:?}");
    assert!(files.contains_key("var/lib/app/fresh"));
    assert!(files.contains_key("opt/tool2/bin/run"));
    for gone in [
        "usr/share/doc/a.txt",
        "var/lib/app/data",
        "var/lib/app/sub",
        "opt/tool",
    ] {
        assert!(!files.contains_key(gone), "{gone} should be deleted");
    }
    assert!(links.contains(&vec!["etc/new".to_string(), "etc/new.hard".to_string()]));
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// Every file of a directory with its content hash, for byte-for-byte comparisons.
fn dir_hashes(d: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walk(d) {
        if e.is_file() {
            out.insert(
                e.strip_prefix(d).unwrap().display().to_string(),
                sha(&fs::read(&e).unwrap()),
            );
        }
    }
    out
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn save_formats_are_right_and_deterministic() {
    let env = Env::new();
    let id = build_image(&env);
    let cfg = env.json(&["inspect", "multi:1"])["image"]["config"].clone();
    let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(diff_ids.len(), 2);

    // OCI layout: every descriptor's digest and size are the blob's; the config blob is
    // the stored config (digest = image id); gunzipped layers hash to the diff_ids.
    let lay = env.path("lay");
    env.ok(&[
        "save",
        "multi:1",
        "base:1",
        "-o",
        lay.to_str().unwrap(),
        "--format",
        "oci-dir",
    ]);
    assert_eq!(
        read_json(&lay.join("oci-layout")),
        json!({"imageLayoutVersion": "1.0.0"})
    );
    let index = read_json(&lay.join("index.json"));
    let ms = index["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    assert_eq!(
        ms[0]["annotations"]["org.opencontainers.image.ref.name"],
        "1"
    );
    assert_eq!(ms[0]["annotations"]["io.containerd.image.name"], "multi:1");
    let check = |d: &Value| {
        let p = blob(&lay, d["digest"].as_str().unwrap());
        let bytes = fs::read(&p).unwrap();
        assert_eq!(sha(&bytes), d["digest"].as_str().unwrap());
        assert_eq!(bytes.len() as u64, d["size"].as_u64().unwrap());
        bytes
    };
    let manifest: Value = serde_json::from_slice(&check(&ms[0])).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    check(&manifest["config"]);
    assert_eq!(manifest["config"]["digest"], id.as_str());
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (l, d) in layers.iter().zip(&diff_ids) {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let gz = check(l);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(&sha(&raw), d);
    }

    // Saving again gives the same bytes, in every format.
    let lay2 = env.path("lay2");
    env.ok(&[
        "save",
        "multi:1",
        "base:1",
        "-o",
        lay2.to_str().unwrap(),
        "--format",
        "oci",
    ]);
    assert_eq!(dir_hashes(&lay), dir_hashes(&lay2));
    for fmt in ["oci-archive", "docker-archive"] {
        let a = env.path(&format!("{fmt}-a.tar"));
        let b = env.path(&format!("{fmt}-b.tar"));
        for p in [&a, &b] {
            env.ok(&[
                "save",
                "multi:1",
                "-o",
                p.to_str().unwrap(),
                "--format",
                fmt,
            ]);
        }
        assert_eq!(
            sha256_file(&a),
            sha256_file(&b),
            "{fmt} is not deterministic"
        );
    }

    // docker-archive: manifest.json, repositories, plain layer tars named in order.
    let d = env.path("docker-archive-a.tar");
    let x = env.path("dx");
    fs::create_dir(&x).unwrap();
    tool(
        "tar",
        &["-xf", d.to_str().unwrap(), "-C", x.to_str().unwrap()],
    );
    let dm = read_json(&x.join("manifest.json"));
    assert_eq!(dm[0]["RepoTags"], json!(["multi:1"]));
    let dl = dm[0]["Layers"].as_array().unwrap();
    for (l, d) in dl.iter().zip(&diff_ids) {
        assert_eq!(&sha256_file(&x.join(l.as_str().unwrap())), d);
    }
    assert_eq!(sha256_file(&x.join(dm[0]["Config"].as_str().unwrap())), id);
    let repos = read_json(&x.join("repositories"));
    assert!(repos["multi"]["1"].is_string());

    // Uncompressed OCI layers are the diff_ids themselves.
    let plain = env.path("plain");
    env.ok(&[
        "save",
        "multi:1",
        "-o",
        plain.to_str().unwrap(),
        "--format",
        "oci-dir",
        "--compress",
        "none",
    ]);
    let pm: Value = serde_json::from_slice(
        &fs::read(blob(
            &plain,
            read_json(&plain.join("index.json"))["manifests"][0]["digest"]
                .as_str()
                .unwrap(),
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(pm["layers"][1]["digest"], diff_ids[1].as_str());
    assert_eq!(
        pm["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );

    // Every format loads back into a fresh store as the same image and the same tree.
    let want = mounted(&env, "multi:1");
    sane(&want);
    for (src, name) in [
        (lay.clone(), None),
        (env.path("oci-archive-a.tar"), None),
        (env.path("docker-archive-a.tar"), Some("other/name:7")),
        (plain.clone(), None),
    ] {
        let e2 = Env::new();
        let mut args = vec!["load", src.to_str().unwrap()];
        if let Some(n) = name {
            args.push(n);
        }
        let o = e2.ok(&args);
        let r = name.unwrap_or("multi:1");
        assert!(o.contains(&format!("{r} {id}")), "{o}");
        assert_eq!(mounted(&e2, r), want, "tree differs after loading {src:?}");
        e2.fsck_clean();
    }

    // Refusals: output in the way, nothing to save.
    env.fails(
        &[
            "save",
            "multi:1",
            "-o",
            lay.to_str().unwrap(),
            "--format",
            "oci-dir",
        ],
        "already exists",
    );
    env.fails(
        &[
            "save",
            "multi:1",
            "-o",
            lay.to_str().unwrap(),
            "--format",
            "oci-archive",
        ],
        "is a directory",
    );
    env.fails(
        &["save", "nope:1", "-o", env.path("z").to_str().unwrap()],
        "no such image",
    );
    assert!(!env.path("z").exists());
}

/// Private podman storage so the tests neither see nor change the host's images.
struct Podman {
    root: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let root = dir.join("podman");
        fs::create_dir_all(root.join("run")).unwrap();
        Podman { root }
    }
    fn run(&self, args: &[&str]) -> String {
        let root = self.root.join("storage").display().to_string();
        let run = self.root.join("run").display().to_string();
        let mut all = vec![
            "--root",
            root.as_str(),
            "--runroot",
            run.as_str(),
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
        ];
        all.extend_from_slice(args);
        let o = tool("podman", &all);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
    /// The tree podman shows for `image` (its own image mount).
    fn tree(&self, image: &str) -> Tree {
        let p = self.run(&["image", "mount", image]);
        let t = tree(Path::new(&p));
        self.run(&["image", "unmount", image]);
        t
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // vfs layers are plain directories; unmount anything left and let TempDir delete.
        let _ = Command::new("podman")
            .args(["--root", &self.root.join("storage").display().to_string()])
            .args(["--runroot", &self.root.join("run").display().to_string()])
            .args(["--storage-driver", "vfs", "image", "unmount", "--all"])
            .output();
    }
}

#[test]
fn interop_skopeo_umoci_podman() {
    let env = Env::new();
    let id = build_image(&env);
    let want = mounted(&env, "multi:1");
    sane(&want);
    let lay = env.path("lay");
    env.ok(&[
        "save",
        "multi:1",
        "-o",
        lay.to_str().unwrap(),
        "--format",
        "oci-dir",
    ]);
    let lays = lay.to_str().unwrap();

    // skopeo reads the layout.
    let o = tool("skopeo", &["inspect", &format!("oci:{lays}:1")]);
    let insp: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(insp["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(insp["Os"], "linux");

    // skopeo copies it to a new layout, which loads back to the same image and tree.
    let sk = env.path("skopeo-copy");
    tool(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            &format!("oci:{lays}:1"),
            &format!("oci:{}:copied", sk.display()),
        ],
    );
    let e2 = Env::new();
    let o = e2.ok(&["load", sk.to_str().unwrap(), "fromskopeo:1"]);
    assert!(
        o.contains(&id),
        "skopeo's copy should keep the image id: {o}"
    );
    assert_eq!(mounted(&e2, "fromskopeo:1"), want);

    // umoci unpacks it to the same tree the layerctl mount shows.
    let bundle = env.path("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{lays}:1"),
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(tree(&bundle.join("rootfs")), want, "umoci unpack differs");

    // podman loads the oci-archive and the docker-archive and shows the same tree.
    let pod = Podman::new(env.dir.path());
    for fmt in ["oci-archive", "docker-archive"] {
        let a = env.path(&format!("{fmt}.tar"));
        env.ok(&[
            "save",
            "multi:1",
            "-o",
            a.to_str().unwrap(),
            "--format",
            fmt,
        ]);
        let o = pod.run(&["load", "-i", a.to_str().unwrap()]);
        assert!(o.contains("multi:1"), "{o}");
        assert_eq!(
            pod.tree("localhost/multi:1"),
            want,
            "podman's tree of the {fmt}"
        );
        pod.run(&["rmi", "localhost/multi:1"]);
    }

    // podman save --format oci-archive loads into layerctl with the tree podman shows.
    let a = env.path("oci-archive.tar");
    pod.run(&["load", "-i", a.to_str().unwrap()]);
    let back = env.path("podman-save.tar");
    pod.run(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        back.to_str().unwrap(),
        "localhost/multi:1",
    ]);
    let e3 = Env::new();
    e3.ok(&["load", back.to_str().unwrap()]);
    assert_eq!(mounted(&e3, "multi:1"), pod.tree("localhost/multi:1"));
    e3.fsck_clean();
    // ... and so does its docker-archive (classic layout: <id>/layer.tar, VERSION, json).
    let back = env.path("podman-save-docker.tar");
    pod.run(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        back.to_str().unwrap(),
        "localhost/multi:1",
    ]);
    let e3 = Env::new();
    let o = e3.ok(&["load", back.to_str().unwrap()]);
    assert!(o.contains(&format!("multi:1 {id}")), "{o}");
    assert_eq!(mounted(&e3, "multi:1"), want);

    // An image podman built itself from a GNU tar (headers unlike layerctl's): the layer is
    // stored under its canonical digest, and the tree is what podman shows.
    let rootfs = env.path("rootfs");
    let gnu = env.path("gnu.tar");
    tool(
        "tar",
        &[
            "--xattrs",
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            gnu.to_str().unwrap(),
            ".",
        ],
    );
    pod.run(&["import", gnu.to_str().unwrap(), "gnu:1"]);
    let gsave = env.path("gnu-save.tar");
    pod.run(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        gsave.to_str().unwrap(),
        "localhost/gnu:1",
    ]);
    let e4 = Env::new();
    e4.ok(&["load", gsave.to_str().unwrap()]);
    let (mut got, got_links) = mounted(&e4, "gnu:1");
    let (mut podman_sees, podman_links) = pod.tree("localhost/gnu:1");
    // GNU tar stores the rootfs's own "./" entry; neither side shows the root itself.
    got.retain(|k, _| !k.is_empty());
    podman_sees.retain(|k, _| !k.is_empty());
    assert_eq!(got, podman_sees);
    assert_eq!(got_links, podman_links);
    e4.fsck_clean();
}

/// The Debian `docker-registry` on 127.0.0.1, killed (and its storage removed with the
/// test's temp dir) when dropped.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        // A free port: bind :0, read it, release it for the registry.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = dir.join("registry-data");
        fs::create_dir_all(&storage).unwrap();
        let cfg = dir.join("registry.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry cannot run: apt-get install docker-registry");
        let r = Registry { child, port };
        let t0 = Instant::now();
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.") && buf.contains(" 200 ") {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "registry did not come up: {}",
                fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn registry_round_trip() {
    let env = Env::new();
    let id = build_image(&env);
    let want = mounted(&env, "multi:1");
    sane(&want);
    let reg = Registry::start(env.dir.path());
    let lay = env.path("lay");
    env.ok(&[
        "save",
        "multi:1",
        "-o",
        lay.to_str().unwrap(),
        "--format",
        "oci-dir",
    ]);
    let remote = format!("docker://127.0.0.1:{}/x:1", reg.port);
    tool(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:1", lay.display()),
            &remote,
        ],
    );
    let back = env.path("pulled");
    tool(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            &remote,
            &format!("oci:{}:1", back.display()),
        ],
    );
    let e2 = Env::new();
    let o = e2.ok(&["load", back.to_str().unwrap(), "x:1"]);
    assert!(
        o.contains(&id),
        "the registry round trip should keep the image id: {o}"
    );
    assert_eq!(mounted(&e2, "x:1"), want);
    e2.fsck_clean();
    drop(reg);
}

// ----- hostile archives -----

struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// An OCI layout with `layers` (raw bytes, stored as they are) whose config promises
    /// `diff_ids` (by default the sha256 of each layer).
    fn new(dir: PathBuf, layers: &[Vec<u8>], diff_ids: Option<Vec<String>>) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        let put = |bytes: &[u8]| -> Value {
            let d = sha(bytes);
            fs::write(blob(&dir, &d), bytes).unwrap();
            json!({"digest": d, "size": bytes.len()})
        };
        let diff_ids = diff_ids.unwrap_or_else(|| layers.iter().map(|l| sha(l)).collect());
        let cfg = json!({"architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": []});
        let mut c = put(&serde_json::to_vec(&cfg).unwrap());
        c["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
        let ls: Vec<Value> = layers
            .iter()
            .map(|l| {
                let mut d = put(l);
                d["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar");
                d
            })
            .collect();
        let m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": c, "layers": ls});
        let mut md = put(&serde_json::to_vec(&m).unwrap());
        md["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
        md["annotations"] = json!({"org.opencontainers.image.ref.name": "1"});
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [md]})).unwrap(),
        )
        .unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir }
    }

    fn manifest(&self) -> Value {
        let idx = read_json(&self.dir.join("index.json"));
        read_json(&blob(
            &self.dir,
            idx["manifests"][0]["digest"].as_str().unwrap(),
        ))
    }
}

/// A tar with raw names: (name, type, link target, data).
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, ty, link, data) in entries {
        let mut h = tar::Header::new_ustar();
        if let Some(u) = h.as_ustar_mut() {
            u.name[..name.len()].copy_from_slice(name.as_bytes());
            u.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(*ty);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Asserts that loading `src` fails with `want` and changes nothing in the store.
fn refused(env: &Env, src: &Path, extra: &[&str], want: &str) {
    let before = store_state(&env.root);
    let mut args = vec!["load", src.to_str().unwrap(), "hostile:1"];
    args.extend_from_slice(extra);
    env.fails(&args, want);
    assert_eq!(
        store_state(&env.root),
        before,
        "a refused load changed the store"
    );
    env.fsck_clean();
}

#[test]
fn hostile_archives_are_refused_and_change_nothing() {
    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};
    let env = Env::new();
    let rootfs = env.import_rootfs("base:1");
    let good = raw_tar(&[("etc/", D, "", b""), ("etc/ok", F, "", b"ok\n")]);

    // A sane layout loads (the cases below differ from it in one thing each).
    let ok = Layout::new(env.path("ok"), std::slice::from_ref(&good), None);
    let e2 = Env::new();
    e2.ok(&["load", ok.dir.to_str().unwrap(), "sane:1"]);

    // Digest mismatch: a layer blob changed after the manifest was written.
    let l = Layout::new(env.path("tampered"), std::slice::from_ref(&good), None);
    let d = l.manifest()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = fs::read(blob(&l.dir, &d)).unwrap();
    let at = bytes.len() - 2000;
    bytes[at] ^= 1;
    fs::write(blob(&l.dir, &d), bytes).unwrap();
    refused(&env, &l.dir, &[], &format!("{d} in"));
    refused(&env, &l.dir, &[], "does not match its digest");

    // Size mismatch in the index's descriptor of the manifest.
    let l = Layout::new(env.path("size"), std::slice::from_ref(&good), None);
    let mut idx = read_json(&l.dir.join("index.json"));
    idx["manifests"][0]["size"] = json!(idx["manifests"][0]["size"].as_u64().unwrap() + 1);
    fs::write(l.dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    refused(&env, &l.dir, &[], "its descriptor says");

    // The manifest names a blob that is not there.
    let l = Layout::new(env.path("missing"), std::slice::from_ref(&good), None);
    let d = l.manifest()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    fs::remove_file(blob(&l.dir, &d)).unwrap();
    refused(&env, &l.dir, &[], &format!("names blob {d}"));

    // The config promises a different uncompressed layer.
    let l = Layout::new(
        env.path("diffid"),
        std::slice::from_ref(&good),
        Some(vec![format!("sha256:{}", "0".repeat(64))]),
    );
    refused(&env, &l.dir, &[], "uncompressed content hashes to");

    // Entries escaping the layer, each named in the error.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "absolute",
            raw_tar(&[("/etc/evil", F, "", b"x")]),
            "/etc/evil",
        ),
        (
            "dotdot",
            raw_tar(&[("etc/../../evil", F, "", b"x")]),
            "etc/../../evil",
        ),
        (
            "symlink",
            raw_tar(&[("lnk", S, "/tmp", b""), ("lnk/evil", F, "", b"x")]),
            "lnk/evil",
        ),
        (
            "hardlink",
            raw_tar(&[("evil", H, "../../../etc/passwd", b"")]),
            "evil",
        ),
        (
            "hardlink-abs",
            raw_tar(&[("evil", H, "/etc/passwd", b"")]),
            "evil",
        ),
        (
            "whiteout-via-symlink",
            raw_tar(&[("lnk", S, "/etc", b""), ("lnk/.wh.passwd", F, "", b"")]),
            "lnk/.wh.passwd",
        ),
        (
            "whiteout-up",
            raw_tar(&[("etc/.wh...", F, "", b"")]),
            "etc/.wh...",
        ),
        (
            "whiteout-dir",
            raw_tar(&[("etc/.wh.x/../../y", F, "", b"")]),
            "etc/.wh.x/../../y",
        ),
        (
            "whiteout-through",
            raw_tar(&[("etc/.wh..wh..opq/x", F, "", b"")]),
            "etc/.wh..wh..opq/x",
        ),
    ];
    for (name, layer, entry) in cases {
        let l = Layout::new(env.path(name), &[good.clone(), layer], None);
        let err = {
            let before = store_state(&env.root);
            let e = env.fails(
                &["load", l.dir.to_str().unwrap(), "hostile:1"],
                "refusing tar entry",
            );
            assert_eq!(store_state(&env.root), before, "{name} changed the store");
            e
        };
        assert!(err.contains(entry), "{name}: {err}");
        env.fsck_clean();
    }
    assert!(!Path::new("/tmp/evil").exists());

    // A tar bomb: 64 MiB of zeros gzip to a few dozen kB; --max-size stops it by name.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    {
        let mut b = tar::Builder::new(&mut gz);
        let mut h = tar::Header::new_ustar();
        h.set_path("bomb").unwrap();
        h.set_size(64 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, std::io::repeat(0).take(64 << 20)).unwrap();
        b.finish().unwrap();
    }
    let bomb = gz.finish().unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&bomb[..])
        .read_to_end(&mut raw)
        .unwrap();
    let l = Layout::new(env.path("bomb"), &[bomb], Some(vec![sha(&raw)]));
    refused(
        &env,
        &l.dir,
        &["--max-size", "1M"],
        "refusing tar entry bomb",
    );
    // Within the bound it is an ordinary layer.
    let e3 = Env::new();
    e3.ok(&[
        "load",
        l.dir.to_str().unwrap(),
        "big:1",
        "--max-size",
        "100M",
    ]);
    // The same bomb as a whole archive (the outer tar of a docker or OCI archive) is
    // stopped by name too.
    let outer = env.path("bomb.tar");
    fs::write(&outer, &raw).unwrap();
    refused(
        &env,
        &outer,
        &["--max-size", "1M"],
        "refusing archive member bomb",
    );

    // A damaged zstd layer is refused, naming the layer; a good one loads.
    let mut z = vec![0x28, 0xb5, 0x2f, 0xfd];
    z.extend_from_slice(&[0; 60]);
    let l = Layout::new(env.path("zstd"), &[z], Some(vec![sha(b"")]));
    refused(&env, &l.dir, &[], "layer 1");
    let zgood = zstd::encode_all(&good[..], 3).unwrap();
    let l = Layout::new(env.path("zstd-good"), &[zgood], Some(vec![sha(&good)]));
    let e2 = Env::new();
    e2.ok(&["load", l.dir.to_str().unwrap(), "z:1"]);
    e2.fsck_clean();

    // Docker archives: a symlinked layer that leaves the archive, and a missing layer.
    let dk = env.path("docker");
    fs::create_dir_all(&dk).unwrap();
    let cfg = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(&good)]}}))
    .unwrap();
    let cname = format!("{}.json", sha(&cfg).trim_start_matches("sha256:"));
    fs::write(dk.join(&cname), &cfg).unwrap();
    fs::write(
        dk.join("manifest.json"),
        serde_json::to_vec(
            &json!([{"Config": cname, "RepoTags": ["d:1"], "Layers": ["l/layer.tar"]}]),
        )
        .unwrap(),
    )
    .unwrap();
    fs::write(dk.join("repositories"), b"{}").unwrap();
    let tar_of = |out: &Path, extra: &[(&str, tar::EntryType, &str, &[u8])]| {
        let mut entries: Vec<(&str, tar::EntryType, &str, &[u8])> = vec![
            ("manifest.json", F, "", b""),
            ("repositories", F, "", b"{}"),
        ];
        entries.extend_from_slice(extra);
        let mut b = tar::Builder::new(Vec::new());
        for (name, ty, link, data) in entries {
            let data: Vec<u8> = if name == "manifest.json" {
                fs::read(dk.join("manifest.json")).unwrap()
            } else {
                data.to_vec()
            };
            let mut h = tar::Header::new_ustar();
            if let Some(u) = h.as_ustar_mut() {
                u.name[..name.len()].copy_from_slice(name.as_bytes());
                u.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(ty);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_path(&cname).unwrap();
        h.set_size(cfg.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &cfg[..]).unwrap();
        fs::write(out, b.into_inner().unwrap()).unwrap();
    };
    let escape = env.path("docker-escape.tar");
    tar_of(
        &escape,
        &[("l/layer.tar", S, "../../../../etc/passwd", b"")],
    );
    refused(&env, &escape, &[], "leads outside the archive");
    let missing = env.path("docker-missing.tar");
    tar_of(&missing, &[]);
    refused(&env, &missing, &[], "l/layer.tar");
    let dotdot = env.path("docker-dotdot.tar");
    tar_of(&dotdot, &[("../evil", F, "", b"x")]);
    refused(&env, &dotdot, &[], "refusing archive member ../evil");
    // The same archive with the layer present (linked inside the archive) loads.
    let fine = env.path("docker-fine.tar");
    tar_of(
        &fine,
        &[
            ("real.tar", F, "", &good),
            ("l/layer.tar", S, "../real.tar", b""),
        ],
    );
    let e4 = Env::new();
    e4.ok(&["load", fine.to_str().unwrap()]);
    assert_eq!(e4.json(&["images", "--json"])[0]["name"], "d");

    // Not an image at all; a bad name; a bad size.
    refused(&env, &rootfs, &[], "neither an OCI image layout");
    env.fails(
        &["load", ok.dir.to_str().unwrap(), "Bad Name"],
        "invalid image name",
    );
    env.fails(
        &["load", ok.dir.to_str().unwrap(), "--max-size", "lots"],
        "bad --max-size",
    );
}

/// `save` and `load` as docker and podman users type them: `-o x.tar` is a docker archive,
/// no `-o` (or `-o -`) streams to stdout, `load` reads stdin (no argument, `-`, `-i -`) and
/// `-i PATH`; `--format docker-dir` writes the dir transport that skopeo reads; podman's
/// `save --format docker-dir` loads with podman's tree; a re-keyed image is announced
/// with both ids.
#[test]
fn save_load_as_docker_users_type_them() {
    let env = Env::new();
    let id = build_image(&env);
    let want = mounted(&env, "multi:1");
    sane(&want);

    // -o x.tar without --format: a docker archive, byte-identical to --format docker-archive.
    let t = env.path("x.tar");
    env.ok(&["save", "multi:1", "-o", t.to_str().unwrap()]);
    let x = env.path("x");
    fs::create_dir(&x).unwrap();
    tool(
        "tar",
        &["-xf", t.to_str().unwrap(), "-C", x.to_str().unwrap()],
    );
    assert!(x.join("manifest.json").is_file() && x.join("repositories").is_file());
    let explicit = env.path("explicit.tar");
    env.ok(&[
        "save",
        "multi:1",
        "-o",
        explicit.to_str().unwrap(),
        "--format",
        "docker-archive",
    ]);
    assert_eq!(sha256_file(&t), sha256_file(&explicit));

    // To stdout: no -o (stdout is a pipe here), and -o -; the same bytes as the file.
    for args in [vec!["save", "multi:1"], vec!["save", "multi:1", "-o", "-"]] {
        let o = env.run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            format!(
                "sha256:{:x}",
                <sha2::Sha256 as sha2::Digest>::digest(&o.stdout)
            ),
            sha256_file(&t),
            "{args:?}"
        );
        assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("multi:1 {id}")));
    }
    let o = env.run(&["save", "multi:1", "--format", "oci-archive"]);
    let oa = env.path("oa.tar");
    env.ok(&[
        "save",
        "multi:1",
        "--format",
        "oci-archive",
        "-o",
        oa.to_str().unwrap(),
    ]);
    assert_eq!(o.stdout, fs::read(&oa).unwrap(), "oci-archive to stdout");
    env.fails(
        &["save", "multi:1", "-o", "-", "--format", "oci-dir"],
        "cannot go to stdout",
    );

    // load from stdin: no argument, `-`, `-i -`; and `-i PATH NAME`.
    for (args, name) in [
        (vec!["load"], "multi:1"),
        (vec!["load", "-"], "multi:1"),
        (vec!["load", "-i", "-", "viastdin:2"], "viastdin:2"),
    ] {
        let e2 = Env::new();
        let o = e2
            .cmd(&args)
            .stdin(fs::File::open(&t).unwrap())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            format!("{name} {id}")
        );
        assert_eq!(mounted(&e2, name), want);
        e2.fsck_clean();
    }
    let e2 = Env::new();
    assert_eq!(
        e2.ok(&["load", "-i", t.to_str().unwrap(), "named:3"]),
        format!("named:3 {id}")
    );
    let o = e2
        .cmd(&["load"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("stdin is empty"));

    // docker-dir: the dir transport, which skopeo reads; it loads back with the same id.
    let dd = env.path("dd");
    env.ok(&[
        "save",
        "multi:1",
        "--format",
        "docker-dir",
        "-o",
        dd.to_str().unwrap(),
    ]);
    let o = tool("skopeo", &["inspect", &format!("dir:{}", dd.display())]);
    let insp: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(insp["Layers"].as_array().unwrap().len(), 2);
    let e3 = Env::new();
    assert_eq!(
        e3.ok(&["load", dd.to_str().unwrap(), "dd:1"]),
        format!("dd:1 {id}")
    );
    assert_eq!(mounted(&e3, "dd:1"), want);

    // podman save --format docker-dir loads with podman's tree.
    let pod = Podman::new(env.dir.path());
    pod.run(&["load", "-i", oa.to_str().unwrap()]);
    let pd = env.path("podman-dd");
    pod.run(&[
        "save",
        "--format",
        "docker-dir",
        "-o",
        pd.to_str().unwrap(),
        "localhost/multi:1",
    ]);
    let e4 = Env::new();
    e4.fails(&["load", pd.to_str().unwrap()], "has no usable name");
    e4.ok(&["load", pd.to_str().unwrap(), "frompodman:1"]);
    assert_eq!(mounted(&e4, "frompodman:1"), pod.tree("localhost/multi:1"));
    e4.fsck_clean();

    // An image podman imported from a GNU tar is re-keyed, and load says so with both ids.
    let rootfs = env.path("rootfs");
    let gnu = env.path("gnu.tar");
    tool(
        "tar",
        &[
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            gnu.to_str().unwrap(),
            ".",
        ],
    );
    pod.run(&["import", gnu.to_str().unwrap(), "gnu:1"]);
    let podman_id = pod.run(&["image", "inspect", "--format", "{{.Id}}", "localhost/gnu:1"]);
    let gsave = env.path("gnu-save.tar");
    pod.run(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        gsave.to_str().unwrap(),
        "localhost/gnu:1",
    ]);
    let e5 = Env::new();
    let o = e5.run(&["load", gsave.to_str().unwrap()]);
    assert!(o.status.success());
    let new_id = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "re-keyed: image sha256:{podman_id} is stored as {new_id}"
        )),
        "{err}"
    );
    assert!(err.contains("written by another tool"), "{err}");
}
