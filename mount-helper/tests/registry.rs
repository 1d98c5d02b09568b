//! `pull`, `push`, `login`, `logout` against Debian's real `docker-registry` on 127.0.0.1
//! (plain HTTP, and TLS with a CA made here plus htpasswd basic auth), with skopeo, umoci
//! and podman as oracles, and a forwarding proxy in the test that counts bytes, throttles,
//! answers 503 and cuts streams. A missing tool fails the test loudly.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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

/// A second layer with whiteouts, an opaque directory, hard links, owners and modes.
const CHANGE: &str = "
printf 'new\\n' > etc/new
printf 'more\\n' >> etc/passwd
rm usr/share/doc/a.txt
rm -r var/lib/app
mkdir var/lib/app
printf 'fresh\\n' > var/lib/app/fresh
ln etc/new etc/new.hard
printf 'owned\\n' > etc/owned
chown 1234:5678 etc/owned
chmod 4750 etc/owned
";

/// `multi:1` in env's store: the common rootfs plus CHANGE, committed through a mount.
fn build_image(env: &Env) -> String {
    env.import_rootfs("base:1");
    let (mnt, _g) = env.mount_new("base:1", "build-mnt", "build");
    sh(&mnt, CHANGE);
    env.ok(&["commit", "build", "multi:1", "-m", "change"]);
    env.ok(&["umount", "build"]);
    env.ok(&["rm", "build"]);
    image_id(env, "multi:1")
}

fn image_id(env: &Env, image: &str) -> String {
    env.json(&["inspect", image])["image"]["id"]
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

/// The oracle: skopeo copies `remote` into an OCI layout, umoci unpacks it.
fn umoci_tree(dir: &Path, remote: &str, tag: &str) -> Tree {
    let lay = dir.join(format!("oracle-{tag}"));
    let _ = fs::remove_dir_all(&lay);
    tool(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "-q",
            "--src-tls-verify=false",
            &format!("docker://{remote}"),
            &format!("oci:{}:{tag}", lay.display()),
        ],
    );
    let bundle = dir.join(format!("bundle-{tag}"));
    let _ = fs::remove_dir_all(&bundle);
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", lay.display()),
            bundle.to_str().unwrap(),
        ],
    );
    tree(&bundle.join("rootfs"))
}

/// The second oracle (it reads zstd, which umoci 0.4 does not): podman pulls `remote`
/// into a private store; returns its tree and `{{.Digest}} {{.ID}}`.
fn podman_tree(dir: &Path, remote: &str) -> (Tree, String) {
    let proot = dir.join("podman-root");
    let prun = dir.join("podman-run");
    let p = |args: &[&str]| {
        let mut a = vec![
            "--root",
            proot.to_str().unwrap(),
            "--runroot",
            prun.to_str().unwrap(),
            "--storage-driver",
            "vfs",
        ];
        a.extend_from_slice(args);
        tool("podman", &a)
    };
    p(&["pull", "-q", "--tls-verify=false", remote]);
    let info = String::from_utf8_lossy(
        &p(&[
            "image",
            "inspect",
            "--format",
            "{{.Digest}} {{.ID}}",
            remote,
        ])
        .stdout,
    )
    .trim()
    .to_string();
    let c = String::from_utf8_lossy(&p(&["create", remote, "/bin/true"]).stdout)
        .trim()
        .to_string();
    let mp = String::from_utf8_lossy(&p(&["mount", &c]).stdout)
        .trim()
        .to_string();
    let t = tree(Path::new(&mp));
    p(&["umount", &c]);
    p(&["rm", &c]);
    (t, info)
}

fn skopeo_push(src: &str, remote: &str, extra: &[&str]) {
    let mut args = vec!["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    let dst = format!("docker://{remote}");
    args.push(src);
    args.push(&dst);
    tool("skopeo", &args);
}

// ----- the registry -----

struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
}

struct Tls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    htpasswd: PathBuf,
}

/// A CA and a server certificate for 127.0.0.1, and an htpasswd with `user`/`secret`.
fn make_tls(dir: &Path) -> Tls {
    let d = dir.join("pki");
    fs::create_dir_all(&d).unwrap();
    let p = |n: &str| d.join(n).display().to_string();
    tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
            "-days",
            "2",
            "-subj",
            "/CN=layerctl test CA",
        ],
    );
    tool(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p("srv.key"),
            "-out",
            &p("srv.csr"),
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    fs::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    tool(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("srv.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("srv.crt"),
            "-days",
            "2",
            "-extfile",
            &p("ext"),
        ],
    );
    let o = tool("htpasswd", &["-Bbn", "user", "secret"]);
    fs::write(d.join("htpasswd"), &o.stdout).unwrap();
    Tls {
        ca: d.join("ca.crt"),
        cert: d.join("srv.crt"),
        key: d.join("srv.key"),
        htpasswd: d.join("htpasswd"),
    }
}

impl Registry {
    fn start(dir: &Path, tls: Option<&Tls>) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = dir.join(format!("registry-data-{port}"));
        fs::create_dir_all(&storage).unwrap();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some(t) = tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                t.cert.display(),
                t.key.display(),
                t.htpasswd.display()
            ));
        }
        let cfgp = dir.join(format!("registry-{port}.yml"));
        fs::write(&cfgp, cfg).unwrap();
        let logp = dir.join(format!("registry-{port}.log"));
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfgp)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&logp).unwrap())
            .spawn()
            .expect("docker-registry cannot run: apt-get install docker-registry");
        let r = Registry {
            child,
            port,
            storage,
        };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "registry did not come up: {}",
                fs::read_to_string(&logp).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Removes a blob from the registry's storage (the image there becomes incomplete).
    fn delete_blob(&self, digest: &str) {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let p = self
            .storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex);
        fs::remove_dir_all(&p).unwrap();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----- the proxy -----

/// A TCP forwarder to the registry: counts the bytes it sends back, and on demand
/// throttles, answers 503 to whole connections, or cuts a response stream short.
struct Proxy {
    port: u16,
    /// Bytes sent from the registry to the client.
    bytes: Arc<AtomicU64>,
    /// Bytes per 10 ms (0: as fast as it goes).
    throttle: Arc<AtomicU64>,
    /// Connections still to answer with 503 (Retry-After: 0).
    fail: Arc<AtomicU32>,
    /// Connections still to cut after `cut_at` (given to `start`) bytes of response.
    cuts: Arc<AtomicU32>,
}

impl Proxy {
    fn start(upstream: u16, cut_at: u64) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = Proxy {
            port,
            bytes: Arc::new(AtomicU64::new(0)),
            throttle: Arc::new(AtomicU64::new(0)),
            fail: Arc::new(AtomicU32::new(0)),
            cuts: Arc::new(AtomicU32::new(0)),
        };
        let (bytes, throttle, fail, cuts) = (
            p.bytes.clone(),
            p.throttle.clone(),
            p.fail.clone(),
            p.cuts.clone(),
        );
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                if fail
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let mut buf = [0u8; 4096];
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = c.read(&mut buf);
                    let _ = c.write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = c.shutdown(Shutdown::Both);
                    continue;
                }
                let cut = cuts
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut up2);
                    let _ = up2.shutdown(Shutdown::Write);
                });
                let (bytes, throttle) = (bytes.clone(), throttle.clone());
                std::thread::spawn(move || {
                    let mut up = up;
                    let mut buf = vec![0u8; 16 << 10];
                    let mut sent = 0u64;
                    loop {
                        let t = throttle.load(Ordering::SeqCst) as usize;
                        let want = if t > 0 { t.min(buf.len()) } else { buf.len() };
                        let n = match up.read(&mut buf[..want]) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        bytes.fetch_add(n as u64, Ordering::SeqCst);
                        sent += n as u64;
                        if cut && sent >= cut_at {
                            break;
                        }
                        if t > 0 {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = up.shutdown(Shutdown::Both);
                });
            }
        });
        p
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// stderr of a failed layerctl: exactly one line, naming `want`.
fn one_line_error(o: &Output, want: &str) -> String {
    assert!(
        !o.status.success(),
        "should fail: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(want), "{err} should name {want}");
    err
}

/// The manifest skopeo reads for `remote`, and its layer digests.
fn remote_manifest(remote: &str) -> (Value, Vec<String>) {
    let o = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{remote}"),
        ],
    );
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    let l = m["layers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| d["digest"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    (m, l)
}

// ----- tests -----

/// Images skopeo pushed in every shape layerctl reads (docker schema 2 and OCI; gzip,
/// zstd and plain layers; layers another tool wrote; a multi-platform index) pull to the
/// tree umoci unpacks, and `run`/`mount` take them by the pulled name.
#[test]
fn pull_what_skopeo_pushed() {
    let env = Env::new();
    let id = build_image(&env);
    let want = mounted(&env, "multi:1");
    assert!(
        want.0["etc/owned"].contains(" 4750 1234:5678 "),
        "{:?}",
        want.0
    );
    let reg = Registry::start(env.dir.path(), None);
    let h = reg.host();
    let gz = env.path("lay-gz");
    let plain = env.path("lay-plain");
    env.ok(&[
        "save",
        "multi:1",
        "-o",
        gz.to_str().unwrap(),
        "--format",
        "oci-dir",
    ]);
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
    let src_gz = format!("oci:{}:1", gz.display());
    let src_plain = format!("oci:{}:1", plain.display());
    // zstd into a registry of its own: skopeo's blob cache would otherwise swap gzip
    // and zstd blobs of the same layer between the pushes.
    let regz = Registry::start(env.dir.path(), None);
    let hz = regz.host();
    skopeo_push(
        &src_plain,
        &format!("{hz}/ocizstd:1"),
        &["--format", "oci", "--dest-compress-format", "zstd"],
    );
    skopeo_push(&src_gz, &format!("{h}/v2s2:1"), &["--format", "v2s2"]);
    skopeo_push(&src_gz, &format!("{h}/ocigz:1"), &["--format", "oci"]);
    skopeo_push(
        &src_plain,
        &format!("{h}/ociplain:1"),
        &["--format", "oci", "--dest-oci-accept-uncompressed-layers"],
    );
    let (m, _) = remote_manifest(&format!("{h}/v2s2:1"));
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let (m, _) = remote_manifest(&format!("{hz}/ocizstd:1"));
    for l in m["layers"].as_array().unwrap() {
        assert!(l["mediaType"].as_str().unwrap().ends_with("zstd"), "{m}");
    }

    for repo in ["v2s2", "ocigz", "ocizstd", "ociplain"] {
        let e = Env::new();
        let r = format!("{}/{repo}:1", if repo == "ocizstd" { &hz } else { &h });
        let o = e.ok(&["pull", &r]);
        assert!(
            o.contains("Pull complete") && o.contains("Digest: sha256:"),
            "{o}"
        );
        assert!(
            o.contains(&format!("Status: Downloaded newer image for {r}")),
            "{o}"
        );
        // Layers layerctl wrote come back under their own ids: the same image.
        assert_eq!(image_id(&e, &r), id, "{repo}");
        let t = mounted(&e, &r);
        assert_eq!(t, want, "{repo}: the pulled tree differs from the original");
        let oracle = if repo == "ocizstd" {
            podman_tree(e.dir.path(), &r).0
        } else {
            umoci_tree(e.dir.path(), &r, repo)
        };
        assert_eq!(t, oracle, "{repo}: differs from umoci unpack / podman");
        let again = e.ok(&["pull", &r]);
        assert!(
            again.contains("Already exists") && again.contains("Image is up to date"),
            "{again}"
        );
        assert!(!again.contains("Pull complete"), "{again}");
        e.fsck_clean();
    }

    // A layer umoci wrote (its own tar headers): stored under the canonical tar's digest,
    // and known as already there on the next pull.
    let ul = env.path("umoci-lay");
    tool("umoci", &["init", "--layout", ul.to_str().unwrap()]);
    tool("umoci", &["new", "--image", &format!("{}:1", ul.display())]);
    let ub = env.path("umoci-bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:1", ul.display()),
            ub.to_str().unwrap(),
        ],
    );
    sh(
        &ub.join("rootfs"),
        "mkdir -p etc bin; printf 'u\\n' > etc/u; ln -s ../etc/u bin/link; mkdir -m 0700 secret",
    );
    tool(
        "umoci",
        &[
            "repack",
            "--image",
            &format!("{}:1", ul.display()),
            ub.to_str().unwrap(),
        ],
    );
    skopeo_push(
        &format!("oci:{}:1", ul.display()),
        &format!("{h}/foreign:1"),
        &[],
    );
    let e = Env::new();
    let r = format!("{h}/foreign:1");
    e.ok(&["pull", &r]);
    assert_eq!(mounted(&e, &r), umoci_tree(e.dir.path(), &r, "foreign"));
    let again = e.ok(&["pull", &r]);
    assert!(again.contains("Already exists"), "{again}");
    e.fsck_clean();
    // ... and `run` takes the registry-qualified name.
    let o = e.run(&["images"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{h}/foreign")));

    // A multi-platform index: this host's entry by default, another with --platform.
    let idx = multi_platform(&gz);
    skopeo_push(
        &format!("oci:{}:1", idx.display()),
        &format!("{h}/multi:1"),
        &["--all"],
    );
    let (m, _) = remote_manifest(&format!("{h}/multi:1"));
    assert_eq!(m["manifests"].as_array().unwrap().len(), 2, "{m}");
    let e = Env::new();
    let r = format!("{h}/multi:1");
    e.ok(&["pull", &r]);
    assert_eq!(image_id(&e, &r), id);
    let o = e.ok(&["pull", "--platform", "linux/arm64", &format!("{h}/multi:1")]);
    assert!(o.contains("Status: Downloaded newer image"), "{o}");
    assert_eq!(
        e.json(&["inspect", &r])["image"]["config"]["architecture"],
        "arm64"
    );
    let o = e.run(&["pull", "--platform", "linux/s390x", &r]);
    one_line_error(&o, "linux/s390x");
    e.fsck_clean();
}

/// An OCI layout beside `lay` whose index holds `lay`'s image for this host and a copy of
/// it whose config says arm64.
fn multi_platform(lay: &Path) -> PathBuf {
    let out = lay.with_file_name("lay-multi");
    sh(
        lay.parent().unwrap(),
        &format!("cp -r {} {}", lay.display(), out.display()),
    );
    let idx = read_json(&out.join("index.json"));
    let mdesc = idx["manifests"][0].clone();
    let m = read_json(&blob(&out, mdesc["digest"].as_str().unwrap()));
    let mut cfg = read_json(&blob(&out, m["config"]["digest"].as_str().unwrap()));
    cfg["architecture"] = json!("arm64");
    let cbytes = serde_json::to_vec(&cfg).unwrap();
    fs::write(blob(&out, &sha(&cbytes)), &cbytes).unwrap();
    let mut m2 = m.clone();
    m2["config"]["digest"] = json!(sha(&cbytes));
    m2["config"]["size"] = json!(cbytes.len());
    let mbytes = serde_json::to_vec(&m2).unwrap();
    fs::write(blob(&out, &sha(&mbytes)), &mbytes).unwrap();
    let host_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let inner = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [
        {"mediaType": mdesc["mediaType"], "digest": mdesc["digest"], "size": mdesc["size"],
         "platform": {"os": "linux", "architecture": host_arch}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&mbytes),
         "size": mbytes.len(), "platform": {"os": "linux", "architecture": "arm64"}},
    ]});
    let ibytes = serde_json::to_vec(&inner).unwrap();
    fs::write(blob(&out, &sha(&ibytes)), &ibytes).unwrap();
    let top = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(&ibytes),
         "size": ibytes.len(), "annotations": {"org.opencontainers.image.ref.name": "1"}}]});
    fs::write(out.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    out
}

/// layerctl pushes; skopeo and podman pull the same digests and tree; a second push
/// uploads nothing and gives the same manifest digest; zstd too.
#[test]
fn push_then_skopeo_and_podman_pull() {
    let env = Env::new();
    let id = build_image(&env);
    let want = mounted(&env, "multi:1");
    let reg = Registry::start(env.dir.path(), None);
    let h = reg.host();
    let r = format!("{h}/pushed:1");
    let o = env.ok(&["push", "multi:1", &r]);
    assert_eq!(o.matches(": Pushed").count(), 2, "{o}");
    let digest = o
        .lines()
        .find_map(|l| l.strip_prefix("1: digest: "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .to_string();
    // The same blobs `save --format oci-dir` writes.
    let lay = env.path("saved");
    env.ok(&[
        "save",
        "multi:1",
        "-o",
        lay.to_str().unwrap(),
        "--format",
        "oci-dir",
    ]);
    let saved = read_json(&lay.join("index.json"))["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(saved, digest, "push and save write the same manifest");
    let (m, layers) = remote_manifest(&r);
    assert_eq!(m["config"]["digest"], json!(id));
    assert_eq!(umoci_tree(env.dir.path(), &r, "pushed"), want);
    // Again: nothing uploaded, same digest.
    let again = env.ok(&["push", "multi:1", &r]);
    assert!(!again.contains("Pushed"), "{again}");
    assert_eq!(again.matches("Layer already exists").count(), 2, "{again}");
    assert!(again.contains(&digest), "{again}");

    // podman, with a private store.
    let (pt, pd) = podman_tree(env.dir.path(), &r);
    assert!(
        pd.contains(&digest),
        "podman sees digest {pd}, layerctl pushed {digest}"
    );
    assert!(pd.contains(id.trim_start_matches("sha256:")), "{pd}");
    assert_eq!(pt, want, "podman's tree differs");

    // zstd: deterministic too, and pulls back to the same image.
    let rz = format!("{h}/pushed:zstd");
    let o1 = env.ok(&["push", "--compression", "zstd", "multi:1", &rz]);
    let o2 = env.ok(&["push", "--compression", "zstd", "multi:1", &rz]);
    assert!(!o2.contains("Pushed"), "{o2}");
    let d1 = o1.lines().last().unwrap().to_string();
    assert_eq!(d1, o2.lines().last().unwrap());
    let (mz, lz) = remote_manifest(&rz);
    assert!(mz["layers"][0]["mediaType"]
        .as_str()
        .unwrap()
        .ends_with("+zstd"));
    assert_ne!(lz, layers);
    assert_eq!(podman_tree(env.dir.path(), &rz).0, want);
    let e = Env::new();
    e.ok(&["pull", &rz]);
    assert_eq!(image_id(&e, &rz), id);
    e.fsck_clean();
}

/// One image with a 48 MiB layer of random bytes (so compression cannot shrink it),
/// pushed uncompressed; returns (env, remote name, image id, layer blob digest).
fn big_image(env: &Env, reg: &Registry) -> (String, String, String) {
    let root = env.path("bigroot");
    fs::create_dir_all(root.join("data")).unwrap();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut buf = vec![0u8; 48 << 20];
    for c in buf.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        c.copy_from_slice(&seed.to_le_bytes()[..c.len()]);
    }
    fs::write(root.join("data/big"), &buf).unwrap();
    fs::write(root.join("data/small"), "small\n").unwrap();
    env.ok(&["import", root.to_str().unwrap(), "big:1"]);
    let r = format!("{}/big:1", reg.host());
    env.ok(&["push", "--compression", "none", "big:1", &r]);
    let (_, layers) = remote_manifest(&r);
    (r, image_id(env, "big:1"), layers[0].clone())
}

/// kill -9 halfway through a big layer; the next pull fetches only the rest (counted at
/// the proxy) and stores the same image; fsck passes after the kill.
#[test]
fn killed_pull_resumes_with_range() {
    let env = Env::new();
    let reg = Registry::start(env.dir.path(), None);
    let (r, id, layer) = big_image(&env, &reg);
    let proxy = Proxy::start(reg.port, 0);
    let via = r.replace(&reg.host(), &proxy.host());
    let e = Env::new();
    proxy.throttle.store(64 << 10, Ordering::SeqCst);
    let mut child = e
        .cmd(&["pull", &via])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let part = e
        .root
        .join("blobs/partial")
        .join(layer.strip_prefix("sha256:").unwrap());
    let half = 24u64 << 20;
    let t0 = Instant::now();
    while fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < half {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the pull never got halfway"
        );
        assert!(child.try_wait().unwrap().is_none(), "the pull ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = fs::metadata(&part).unwrap().len();
    assert!(kept >= half && kept < 48 << 20, "{kept}");
    // Nothing named, nothing damaged; the partial blob is a note, not damage.
    assert!(!e.ok(&["images"]).contains("big"));
    e.fsck_passes("after kill -9 of a pull");
    assert!(part.exists(), "fsck must keep the partial blob");

    proxy.throttle.store(0, Ordering::SeqCst);
    let before = proxy.bytes.load(Ordering::SeqCst);
    let o = e.ok(&["pull", &via]);
    assert!(o.contains("Pull complete"), "{o}");
    let fetched = proxy.bytes.load(Ordering::SeqCst) - before;
    let rest = (48u64 << 20) + 10240 - kept;
    assert!(
        fetched < rest + (1 << 20),
        "the second pull fetched {fetched} bytes; only about {rest} were missing"
    );
    assert_eq!(
        image_id(&e, &via),
        id,
        "the resumed pull stores the same image"
    );
    assert!(!part.exists());
    e.fsck_clean();
    assert_eq!(mounted(&e, &via), mounted(&env, "big:1"));
}

/// A registry that answers 503 for a while and cuts streams short: the pull retries,
/// continues the cut blob with Range, and succeeds.
#[test]
fn flaky_registry_pull_succeeds() {
    let env = Env::new();
    let reg = Registry::start(env.dir.path(), None);
    let (r, id, _) = big_image(&env, &reg);
    let proxy = Proxy::start(reg.port, 8 << 20);
    let via = r.replace(&reg.host(), &proxy.host());
    proxy.fail.store(4, Ordering::SeqCst);
    proxy.cuts.store(3, Ordering::SeqCst);
    let e = Env::new();
    let o = e.ok(&["pull", &via]);
    assert!(o.contains("Pull complete"), "{o}");
    assert_eq!(proxy.fail.load(Ordering::SeqCst), 0, "the 503s were served");
    assert_eq!(image_id(&e, &via), id);
    e.fsck_clean();
    // Every connection refused, far past the retries: one line, nothing stored.
    let e2 = Env::new();
    e2.ok(&["images"]);
    let before = store_state(&e2.root);
    proxy.fail.store(1000, Ordering::SeqCst);
    let o = e2.run(&["pull", "--retries", "2", &via]);
    one_line_error(&o, "503");
    assert_eq!(store_state(&e2.root), before);
}

/// TLS with a CA made here and htpasswd auth: login checks and files the credentials
/// (auth.json as podman has it), pull and push use them; wrong password, missing tag
/// and missing blob fail with one line and change nothing.
#[test]
fn tls_auth_and_one_line_errors() {
    let env = Env::new();
    build_image(&env);
    let tls = make_tls(env.dir.path());
    let reg = Registry::start(env.dir.path(), Some(&tls));
    let h = reg.host();
    let certs = env.path("certs");
    fs::create_dir_all(&certs).unwrap();
    fs::copy(&tls.ca, certs.join("ca.crt")).unwrap();
    let auth = env.path("auth.json");
    let with = |args: &[&str]| {
        let mut c = env.cmd(args);
        c.env("REGISTRY_AUTH_FILE", &auth)
            .env("LAYERCTL_CERT_DIR", &certs)
            .env("DOCKER_CONFIG", env.path("no-docker"));
        c
    };
    let run = |args: &[&str], stdin: &str| {
        let mut c = with(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut ch = c.spawn().unwrap();
        ch.stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        ch.wait_with_output().unwrap()
    };
    let r = format!("{h}/secure:1");
    env.ok(&["images"]);
    let before = store_state(&env.root);
    // No credentials yet.
    one_line_error(&run(&["push", "multi:1", &r], ""), "layerctl login");
    // Not trusted without the CA.
    let o = env.run(&["pull", &r]);
    assert!(!o.status.success());
    // Wrong password: refused, nothing filed.
    one_line_error(
        &run(&["login", "-u", "user", "--password-stdin", &h], "wrong\n"),
        "refused the credentials",
    );
    assert!(!auth.exists());
    let o = run(&["login", "-u", "user", "--password-stdin", &h], "secret\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = read_json(&auth);
    assert!(a["auths"][&h]["auth"].is_string(), "{a}");
    let o = run(&["push", "multi:1", &r], "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // skopeo reads the same auth.json and trusts the same CA.
    tool(
        "skopeo",
        &[
            "inspect",
            "--authfile",
            auth.to_str().unwrap(),
            "--cert-dir",
            certs.to_str().unwrap(),
            &format!("docker://{r}"),
        ],
    );
    let e = Env::new();
    let pull = |e: &Env, args: &[&str]| {
        let mut c = e.cmd(args);
        c.env("REGISTRY_AUTH_FILE", &auth)
            .env("LAYERCTL_CERT_DIR", &certs);
        c.output().unwrap()
    };
    let o = pull(&e, &["pull", &r]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e.fsck_clean();
    // --tls-verify=false needs no CA.
    let e3 = Env::new();
    let mut c = e3.cmd(&["pull", "--tls-verify=false", &r]);
    c.env("REGISTRY_AUTH_FILE", &auth);
    assert!(c.output().unwrap().status.success());

    // Missing tag, missing blob, wrong password: one line, store unchanged.
    let e2 = Env::new();
    e2.ok(&["images"]);
    let clean = store_state(&e2.root);
    one_line_error(
        &pull(&e2, &["pull", &format!("{h}/secure:nope")]),
        "no such image",
    );
    one_line_error(
        &pull(&e2, &["pull", &format!("{h}/nothere:1")]),
        "no such image",
    );
    let (_, layers) = {
        let o = tool(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--authfile",
                auth.to_str().unwrap(),
                "--cert-dir",
                certs.to_str().unwrap(),
                &format!("docker://{r}"),
            ],
        );
        let m: Value = serde_json::from_slice(&o.stdout).unwrap();
        let l: Vec<String> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap().to_string())
            .collect();
        (m, l)
    };
    reg.delete_blob(&layers[1]);
    one_line_error(&pull(&e2, &["pull", &r]), "missing from the registry");
    let mut c = e2.cmd(&["pull", "--creds", "user:wrong", &r]);
    c.env("LAYERCTL_CERT_DIR", &certs);
    one_line_error(&c.output().unwrap(), "refused the credentials");
    let after: BTreeMap<String, String> = store_state(&e2.root)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("blobs") && !k.starts_with("tmp"))
        .collect();
    let clean: BTreeMap<String, String> = clean
        .into_iter()
        .filter(|(k, _)| !k.starts_with("blobs") && !k.starts_with("tmp"))
        .collect();
    assert_eq!(
        after, clean,
        "a failed pull stores nothing but resumable blobs"
    );
    e2.fsck_passes("after failed pulls");
    let o = e2.ok(&["gc"]);
    assert!(o.contains("freed"), "{o}");
    assert!(
        fs::read_dir(e2.root.join("blobs/partial"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );

    // logout forgets them.
    let o = with(&["logout", &h]).output().unwrap();
    assert!(o.status.success());
    assert!(read_json(&auth)["auths"].get(&h).is_none());
    one_line_error(&with(&["logout", &h]).output().unwrap(), "not logged in");
    let pushed: BTreeMap<String, String> = store_state(&env.root)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("blobs") && !k.starts_with("tmp"))
        .collect();
    let before: BTreeMap<String, String> = before
        .into_iter()
        .filter(|(k, _)| !k.starts_with("blobs") && !k.starts_with("tmp"))
        .collect();
    assert_eq!(
        pushed, before,
        "push changes nothing in the store but its digest cache"
    );
}
