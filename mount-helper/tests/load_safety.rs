//! `layerctl load` of layouts and archives whose records are not what they claim: FIFOs,
//! devices, symlinks out of the layout, directories where files belong, oversized JSON.
//! Each must come back within a second with a one-line error and the store unchanged;
//! a hang is caught by a hard deadline, not waited out. Also: the store lock's bounded
//! wait and its holder in the message, and images with no layers.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What the issue asks of every refusal.
const BUDGET: Duration = Duration::from_secs(1);
/// Past this the command is taken to hang: killed, and the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Runs layerctl with a hard deadline; returns its output and how long it took.
fn timed(
    env: &Env,
    args: &[&str],
    vars: &[(&str, &str)],
    deadline: Duration,
) -> (Output, Duration) {
    let mut c = env.cmd(args);
    c.envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().expect("starting layerctl");
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("layerctl {args:?} still running after {deadline:?}: it blocks");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    (child.wait_with_output().unwrap(), took)
}

/// Asserts a fast one-line refusal containing `want` that leaves the store as it was.
fn refused_fast(env: &Env, src: &Path, want: &str) -> Duration {
    let before = store_state(&env.root);
    let args = ["load", src.to_str().unwrap(), "hostile:1"];
    let (o, took) = timed(env, &args, &[], DEADLINE);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(
        err.contains(want),
        "{}: expected {want:?} in {err:?}",
        src.display()
    );
    assert!(took < BUDGET, "{} took {took:?}", src.display());
    assert_eq!(
        store_state(&env.root),
        before,
        "{} changed the store",
        src.display()
    );
    took
}

/// A one-image OCI layout. `pad` spaces are appended to the config JSON (still valid).
struct Layout {
    dir: PathBuf,
    manifest: String,
    config: String,
    layers: Vec<String>,
}

impl Layout {
    fn new(dir: PathBuf, layers: &[Vec<u8>], pad: usize) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        let put = |bytes: &[u8], mt: &str| -> Value {
            let d = sha(bytes);
            fs::write(blob_at(&dir, &d), bytes).unwrap();
            json!({"mediaType": mt, "digest": d, "size": bytes.len()})
        };
        let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
        let mut cfg = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
            "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": []}))
        .unwrap();
        cfg.extend(std::iter::repeat_n(b' ', pad));
        let c = put(&cfg, "application/vnd.oci.image.config.v1+json");
        let ls: Vec<Value> = layers
            .iter()
            .map(|l| put(l, "application/vnd.oci.image.layer.v1.tar"))
            .collect();
        let m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": c, "layers": ls});
        let mut md = put(
            &serde_json::to_vec(&m).unwrap(),
            "application/vnd.oci.image.manifest.v1+json",
        );
        md["annotations"] = json!({"org.opencontainers.image.ref.name": "1"});
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [md]})).unwrap(),
        )
        .unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            manifest: md["digest"].as_str().unwrap().to_string(),
            config: c["digest"].as_str().unwrap().to_string(),
            layers: ls
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string())
                .collect(),
            dir,
        }
    }

    fn blob(&self, d: &str) -> PathBuf {
        blob_at(&self.dir, d)
    }
}

fn blob_at(dir: &Path, d: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(d.strip_prefix("sha256:").unwrap())
}

fn layer_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("etc/ok").unwrap();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_mtime(1);
    h.set_cksum();
    b.append(&h, &b"ok\n"[..]).unwrap();
    b.into_inner().unwrap()
}

fn mkfifo(p: &Path) {
    let _ = fs::remove_file(p);
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success(), "mkfifo {}", p.display());
}

fn replace_with_dir(p: &Path) {
    fs::remove_file(p).unwrap();
    fs::create_dir(p).unwrap();
    fs::write(p.join("x"), "x").unwrap();
}

/// The layout directory `dir` as an oci-archive: every entry as it is on disk (FIFOs,
/// devices and symlinks included), so the directory cases become archive cases.
fn tar_of(dir: &Path, out: &Path) {
    fn walk(b: &mut tar::Builder<Vec<u8>>, root: &Path, d: &Path) {
        let mut names: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(1);
            h.set_size(0);
            if ft.is_symlink() {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, &rel, fs::read_link(&p).unwrap())
                    .unwrap();
            } else if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, format!("{rel}/"), &[][..]).unwrap();
                walk(b, root, &p);
            } else if ft.is_file() {
                let data = fs::read(&p).unwrap();
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &rel, &data[..]).unwrap();
            } else {
                h.set_entry_type(if ft.is_fifo() {
                    tar::EntryType::Fifo
                } else {
                    tar::EntryType::Char
                });
                b.append_data(&mut h, &rel, &[][..]).unwrap();
            }
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    walk(&mut b, dir, dir);
    fs::write(out, b.into_inner().unwrap()).unwrap();
}

type Mutate = Box<dyn Fn(&Layout, &Path)>;

#[test]
fn load_refuses_bad_records_fast_and_changes_nothing() {
    let env = Env::new();
    env.import_rootfs("base:1");
    let good = layer_tar();
    // A host file the layouts point at: a copy of their own record, so that following
    // the link would "work" (and read outside the layout).
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();

    let a = |f: fn(&Layout, &Path)| -> Mutate { Box::new(f) };
    // (case, change to a sane layout, error from the directory, error from the archive)
    let cases: Vec<(&str, Mutate, &str, &str)> = vec![
        (
            "index-fifo",
            a(|l, _| mkfifo(&l.dir.join("index.json"))),
            "is a FIFO, not a regular file",
            "unexpected entry type",
        ),
        (
            "layout-fifo",
            a(|l, _| mkfifo(&l.dir.join("oci-layout"))),
            "is a FIFO, not a regular file",
            "unexpected entry type",
        ),
        (
            "manifest-fifo",
            a(|l, _| mkfifo(&l.blob(&l.manifest))),
            "is a FIFO, not a regular file",
            "unexpected entry type",
        ),
        (
            "config-fifo",
            a(|l, _| mkfifo(&l.blob(&l.config))),
            "is a FIFO, not a regular file",
            "unexpected entry type",
        ),
        (
            "layer-fifo",
            a(|l, _| mkfifo(&l.blob(&l.layers[0]))),
            "is a FIFO, not a regular file",
            "unexpected entry type",
        ),
        (
            "index-device",
            a(|l, _| {
                let p = l.dir.join("index.json");
                fs::remove_file(&p).unwrap();
                // /dev/zero: reading it never ends.
                sh(&l.dir, "mknod index.json c 1 5");
                assert!(p.exists());
            }),
            "is a character device, not a regular file",
            "unexpected entry type",
        ),
        (
            "index-symlink-absolute",
            a(|l, out| {
                let p = l.dir.join("index.json");
                let host = out.join(format!(
                    "{}-index.json",
                    l.dir.file_name().unwrap().to_str().unwrap()
                ));
                fs::copy(&p, &host).unwrap();
                fs::remove_file(&p).unwrap();
                symlink(&host, &p).unwrap();
            }),
            "leads outside the archive",
            "symlink to an absolute path",
        ),
        (
            "layer-symlink-relative-out",
            a(|l, out| {
                let p = l.blob(&l.layers[0]);
                let host = out.join(l.layers[0].trim_start_matches("sha256:"));
                fs::copy(&p, &host).unwrap();
                fs::remove_file(&p).unwrap();
                // layout/blobs/sha256/X -> ../../../outside/X
                symlink(
                    Path::new("../../..")
                        .join("outside")
                        .join(host.file_name().unwrap()),
                    &p,
                )
                .unwrap();
                assert!(fs::metadata(&p).is_ok(), "the link resolves on the host");
            }),
            "leads outside the archive",
            "leads outside the archive",
        ),
        (
            "blobs-dir-symlink-out",
            a(|l, out| {
                let host = out.join(format!(
                    "{}-blobs",
                    l.dir.file_name().unwrap().to_str().unwrap()
                ));
                fs::rename(l.dir.join("blobs"), &host).unwrap();
                symlink(&host, l.dir.join("blobs")).unwrap();
            }),
            "leads outside the archive",
            "symlink to an absolute path",
        ),
        (
            "index-dir",
            a(|l, _| replace_with_dir(&l.dir.join("index.json"))),
            "is a directory, not a regular file",
            "is a directory, not a regular file",
        ),
        (
            "layout-dir",
            a(|l, _| replace_with_dir(&l.dir.join("oci-layout"))),
            "is a directory, not a regular file",
            "is a directory, not a regular file",
        ),
        (
            "manifest-dir",
            a(|l, _| replace_with_dir(&l.blob(&l.manifest))),
            "is a directory, not a regular file",
            "is a directory, not a regular file",
        ),
        (
            "config-dir",
            a(|l, _| replace_with_dir(&l.blob(&l.config))),
            "is a directory, not a regular file",
            "is a directory, not a regular file",
        ),
        (
            "layer-dir",
            a(|l, _| replace_with_dir(&l.blob(&l.layers[0]))),
            "is a directory, not a regular file",
            "is a directory, not a regular file",
        ),
        (
            "index-huge",
            a(|l, _| {
                let p = l.dir.join("index.json");
                let mut v = fs::read(&p).unwrap();
                v.extend(std::iter::repeat_n(b' ', 5 << 20));
                fs::write(&p, v).unwrap();
            }),
            "more than the 4 MiB",
            "more than the 4 MiB",
        ),
    ];
    let mut times = Vec::new();
    for (name, mutate, dir_want, tar_want) in &cases {
        let l = Layout::new(env.path(name), std::slice::from_ref(&good), 0);
        // Each case differs from a layout that loads in exactly the one thing.
        let tarball = env.path(&format!("{name}-sane.tar"));
        tar_of(&l.dir, &tarball);
        let e2 = Env::new();
        e2.ok(&["load", l.dir.to_str().unwrap(), "sane:1"]);
        e2.ok(&["load", tarball.to_str().unwrap(), "sane:2"]);

        mutate(&l, &outside);
        times.push((name.to_string(), refused_fast(&env, &l.dir, dir_want)));
        let tarball = env.path(&format!("{name}.tar"));
        tar_of(&l.dir, &tarball);
        times.push((
            format!("{name}.tar"),
            refused_fast(&env, &tarball, tar_want),
        ));
    }

    // A config of 5 MiB (its digest and size right): refused by its size, unread.
    let l = Layout::new(
        env.path("config-huge"),
        std::slice::from_ref(&good),
        5 << 20,
    );
    refused_fast(&env, &l.dir, "more than the 4 MiB");
    let t = env.path("config-huge.tar");
    tar_of(&l.dir, &t);
    refused_fast(&env, &t, "more than the 4 MiB");

    // The path itself is a FIFO: refused, not opened for a blocking read.
    let fifo = env.path("p.fifo");
    mkfifo(&fifo);
    refused_fast(&env, &fifo, "is a FIFO");

    // A FIFO record is never even opened: a writer waiting on it would be let through
    // by any open for reading (blocking or not).
    let l = Layout::new(env.path("fifo-watch"), std::slice::from_ref(&good), 0);
    let m = l.blob(&l.manifest);
    mkfifo(&m);
    let opened = env.path("fifo-opened");
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3>'{}'; touch '{}'",
            m.display(),
            opened.display()
        ))
        .spawn()
        .unwrap();
    // Let the writer block in its open before the load runs.
    std::thread::sleep(Duration::from_millis(100));
    refused_fast(&env, &l.dir, "is a FIFO, not a regular file");
    std::thread::sleep(Duration::from_millis(300));
    let never_opened = !opened.exists();
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(never_opened, "load opened the FIFO {}", m.display());

    // import of a FIFO: refused the same way (it used to block holding the lock).
    let before = store_state(&env.root);
    let (o, took) = timed(
        &env,
        &["import", fifo.to_str().unwrap(), "f:1"],
        &[],
        DEADLINE,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a directory or a regular file"));
    assert!(took < BUDGET, "{took:?}");
    assert_eq!(store_state(&env.root), before);

    // Symlinks inside the layout are aliases, resolved lexically: these load.
    let l = Layout::new(env.path("inside"), std::slice::from_ref(&good), 0);
    let shared = l.dir.join("shared");
    fs::create_dir(&shared).unwrap();
    let p = l.blob(&l.layers[0]);
    fs::rename(&p, shared.join("layer")).unwrap();
    symlink("../../shared/layer", &p).unwrap();
    fs::rename(l.dir.join("index.json"), shared.join("index")).unwrap();
    symlink("shared/index", l.dir.join("index.json")).unwrap();
    let e3 = Env::new();
    e3.ok(&["load", l.dir.to_str().unwrap(), "inside:1"]);
    let t = env.path("inside.tar");
    tar_of(&l.dir, &t);
    e3.ok(&["load", t.to_str().unwrap(), "inside:2"]);
    e3.fsck_clean();

    env.fsck_clean();
    // Nothing outside was changed either (the copies are where the tests put them).
    assert!(fs::read_dir(&outside).unwrap().count() >= 3);
    let slowest = times.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!("slowest refusal: {slowest:?} of {} cases", times.len());
}

/// A `docker save` directory: manifest.json, the config named by its digest, l/layer.tar.
fn docker_dir(dir: &Path, layer: &[u8]) -> String {
    fs::create_dir_all(dir.join("l")).unwrap();
    let cfg = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}))
    .unwrap();
    let cname = format!("{}.json", sha(&cfg).trim_start_matches("sha256:"));
    fs::write(dir.join(&cname), &cfg).unwrap();
    fs::write(dir.join("l/layer.tar"), layer).unwrap();
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(
            &json!([{"Config": cname, "RepoTags": ["d:1"], "Layers": ["l/layer.tar"]}]),
        )
        .unwrap(),
    )
    .unwrap();
    cname
}

#[test]
fn docker_save_directories_and_archives_too() {
    let env = Env::new();
    env.import_rootfs("base:1");
    let good = layer_tar();
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    type Change = fn(&Path, &str, &Path);
    let cases: Vec<(&str, Change, &str, &str)> = vec![
        (
            "manifest-fifo",
            |d, _, _| mkfifo(&d.join("manifest.json")),
            "is a FIFO, not a regular file",
            "unexpected entry type",
        ),
        (
            "config-symlink-out",
            |d, c, out| {
                let host = out.join(c);
                fs::copy(d.join(c), &host).unwrap();
                fs::remove_file(d.join(c)).unwrap();
                symlink(&host, d.join(c)).unwrap();
            },
            "leads outside the archive",
            "symlink to an absolute path",
        ),
        (
            "layer-symlink-out",
            |d, _, out| {
                fs::copy(d.join("l/layer.tar"), out.join("layer.tar")).unwrap();
                fs::remove_file(d.join("l/layer.tar")).unwrap();
                symlink("../../outside/layer.tar", d.join("l/layer.tar")).unwrap();
            },
            "leads outside the archive",
            "leads outside the archive",
        ),
        (
            "layer-dir",
            |d, _, _| replace_with_dir(&d.join("l/layer.tar")),
            "is a directory, not a regular file",
            "is a directory, not a regular file",
        ),
        (
            "manifest-huge",
            |d, _, _| {
                let p = d.join("manifest.json");
                let mut v = fs::read(&p).unwrap();
                v.extend(std::iter::repeat_n(b' ', 5 << 20));
                fs::write(&p, v).unwrap();
            },
            "more than the 4 MiB",
            "more than the 4 MiB",
        ),
    ];
    for (name, change, dir_want, tar_want) in cases {
        let d = env.path(name);
        let cname = docker_dir(&d, &good);
        let e2 = Env::new();
        e2.ok(&["load", d.to_str().unwrap()]);
        change(&d, &cname, &outside);
        refused_fast(&env, &d, dir_want);
        let t = env.path(&format!("{name}.tar"));
        tar_of(&d, &t);
        refused_fast(&env, &t, tar_want);
    }
    env.fsck_clean();
}

/// `layerctl mount` with a mount program that never returns holds the store lock (as a
/// stuck writer would) until killed.
struct Holder {
    child: Child,
    sleeper: PathBuf,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(pid) = fs::read_to_string(&self.sleeper) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}

#[test]
fn a_held_lock_is_named_within_the_bound() {
    let env = Env::new();
    let rootfs = env.import_rootfs("base:1");
    let prog = env.path("stuck-mount");
    let sleeper = env.path("sleeper.pid");
    write(
        &prog,
        &format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 60\n",
            sleeper.display()
        ),
    );
    sh(env.dir.path(), &format!("chmod +x {}", prog.display()));
    let target = env.path("t");
    fs::create_dir(&target).unwrap();
    let child = env
        .cmd(&["mount", "base:1", target.to_str().unwrap()])
        .env("LAYERCTL_MOUNT_PROGRAM", &prog)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let holder = Holder { child, sleeper };
    // The holder writes its pid into the lock file once it has the lock.
    let lock = env.root.join("lock");
    let start = Instant::now();
    while !holder.sleeper.exists() {
        assert!(start.elapsed() < DEADLINE, "the stuck mount never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = fs::read_to_string(&lock).unwrap();
    assert_eq!(text.trim(), format!("{pid} mount"), "lock file contents");

    let before = store_state(&env.root);
    let want = format!(
        "store busy: layerctl pid {pid} (mount) holds it ({})",
        lock.display()
    );
    let src = rootfs.to_str().unwrap();
    let check = |o: &Output| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
        assert!(err.contains(&want), "expected {want:?} in {err:?}");
    };
    let (o, took) = timed(
        &env,
        &["import", src, "x:1"],
        &[("LAYERCTL_LOCK_TIMEOUT", "0.5")],
        DEADLINE,
    );
    check(&o);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // The default bound: 10 s, not forever.
    let (o, took) = timed(&env, &["gc"], &[], Duration::from_secs(30));
    check(&o);
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(12),
        "{took:?}"
    );
    assert_eq!(
        store_state(&env.root),
        before,
        "a refused writer changed the store"
    );
    let bad = env
        .cmd(&["gc"])
        .env("LAYERCTL_LOCK_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr)
        .contains("LAYERCTL_LOCK_TIMEOUT=\"soon\" is not a number"));

    // Killed, the holder releases the lock; the next writer goes ahead.
    drop(holder);
    let (o, took) = timed(&env, &["import", src, "x:1"], &[], DEADLINE);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(took < Duration::from_secs(5));
    env.fsck_passes("after the holder was killed");
}

#[test]
fn an_image_with_no_layers_is_an_empty_root() {
    let env = Env::new();
    let l = Layout::new(env.path("scratch"), &[], 0);
    env.ok(&["load", l.dir.to_str().unwrap(), "scratch:1"]);
    assert_eq!(env.json(&["images", "--json"])[0]["layers"], 0);

    // Read-only: an empty root.
    let ro = env.path("ro");
    fs::create_dir(&ro).unwrap();
    let _g = MountGuard(vec![ro.clone(), env.path("rw")]);
    let name = env.ok(&["mount", "scratch:1", ro.to_str().unwrap(), "--read-only"]);
    assert_eq!(fs::read_dir(&ro).unwrap().count(), 0);
    env.ok(&["umount", &name]);
    env.ok(&["rm", &name]);

    // Writable: build on it, commit, run what was committed.
    let (rw, _g2) = env.mount_new("scratch:1", "rw", "c");
    fs::create_dir(rw.join("bin")).unwrap();
    fs::copy("/usr/bin/busybox", rw.join("bin/busybox")).unwrap();
    write(&rw.join("hello"), "from scratch\n");
    env.ok(&["umount", "c"]);
    env.ok(&["commit", "c", "built:1"]);
    env.ok(&["rm", "c"]);
    assert_eq!(env.json(&["images", "--json"])[0]["layers"], 1);
    assert!(
        fs::read_dir(env.root.join("empty"))
            .unwrap()
            .next()
            .is_none(),
        "the shared empty lower dir was written to"
    );
    let o = env.run(&[
        "run",
        "--rm",
        "built:1",
        "--",
        "/bin/busybox",
        "cat",
        "/hello",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from scratch\n");

    // Running the empty image itself reaches the runtime, which finds no command (as
    // podman run of a scratch image does): the mount is not what fails.
    let o = env.run(&["run", "--rm", "scratch:1", "--", "/bin/true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(!err.contains("mount program"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(env.json(&["ps", "--json"]).as_array().unwrap().is_empty());

    // It saves and loads back as the same empty image.
    let out = env.path("saved");
    env.ok(&["save", "scratch:1", "-o", out.to_str().unwrap()]);
    let e2 = Env::new();
    e2.ok(&["load", out.to_str().unwrap(), "again:1"]);
    assert_eq!(
        e2.json(&["inspect", "again:1"])["image"]["id"],
        env.json(&["inspect", "scratch:1"])["image"]["id"]
    );
    env.fsck_clean();
}
