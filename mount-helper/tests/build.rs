//! `layerctl build` against real runtimes on real layerfs mounts: podman build as the
//! oracle (rootful, runc, no network, a private storage root) for the final trees and
//! configs of the same Containerfiles; the build cache (all steps reused, a touched COPY
//! source rebuilds from that step, --no-cache); a failing RUN's report and cleanup;
//! reproducible ids across two stores with --timestamp; heredocs, .dockerignore with `!`,
//! sources that try to leave the context, and ADD of a local tar.

mod common;

#[path = "../../tests/common/rootless.rs"]
mod rootless;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// For tests/common/rootless.rs: the daemon it copies for the test user.
fn layerfs_bin() -> PathBuf {
    layerctl_bin().with_file_name("layerfs")
}

/// A busybox root file system with passwd/group (root, app:1000), /opt/lowerdir/old and
/// /etc/motd to delete, fixed times.
fn busybox(root: &Path) {
    rootless::busybox_rootfs(root);
    sh(root, "find . -exec touch -h -d @1000000000 {} +");
}

/// podman with a private storage root under the test dir (never the machine's).
struct Podman {
    root: PathBuf,
    runroot: PathBuf,
}

impl Podman {
    fn new(env: &Env) -> Podman {
        rootless::require_tool("podman", "podman");
        rootless::require_tool("runc", "runc");
        Podman {
            root: env.path("podman-root"),
            runroot: env.path("podman-run"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args).output().expect("running podman");
        assert!(
            o.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn build(&self, ctx: &Path, tag: &str, extra: &[&str]) {
        let mut args = vec![
            "build",
            "--runtime",
            "runc",
            "--network",
            "none",
            "--pull=never",
            "-t",
            tag,
        ];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        self.ok(&args);
    }

    /// The image's tree, through `podman image mount`.
    fn tree(&self, image: &str) -> BTreeMap<String, String> {
        let dir = self.ok(&["image", "mount", image]);
        let snap = snapshot(Path::new(&dir));
        self.ok(&["image", "unmount", image]);
        snap
    }

    fn config(&self, image: &str) -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["image", "inspect", image])).unwrap();
        v[0].clone()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Mounted image layers and the storage's own mounts go with the test dir.
        let _ = self.cmd(&["image", "unmount", "--all"]).output();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.root.join("vfs"))
            .output();
    }
}

fn layerctl_tree(env: &Env, image: &str, rel: &str) -> BTreeMap<String, String> {
    let mnt = env.path(rel);
    fs::create_dir_all(&mnt).unwrap();
    let guard = MountGuard(vec![mnt.clone()]);
    let name = format!("snap-{rel}");
    env.ok(&[
        "mount",
        image,
        mnt.to_str().unwrap(),
        "--name",
        &name,
        "--read-only",
    ]);
    let snap = snapshot(&mnt);
    env.ok(&["umount", &name]);
    env.ok(&["rm", &name]);
    drop(guard);
    snap
}

/// The config fields the oracle compares, and the history's empty_layer flags.
fn summary(cfg: &serde_json::Value, history: &serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::Map::new();
    for k in [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "Labels",
        "ExposedPorts",
    ] {
        let mut v = cfg.get(k).cloned().unwrap_or(serde_json::Value::Null);
        if k == "Labels" {
            if let Some(m) = v.as_object_mut() {
                // buildah's own stamp.
                m.remove("io.buildah.version");
                if m.is_empty() {
                    v = serde_json::Value::Null;
                }
            }
        }
        if v.as_str() == Some("") {
            v = serde_json::Value::Null;
        }
        c.insert(k.to_string(), v);
    }
    let flags: Vec<bool> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["empty_layer"].as_bool().unwrap_or(false))
        .collect();
    c.insert("history_empty_layer".into(), serde_json::json!(flags));
    serde_json::Value::Object(c)
}

fn layerctl_summary(env: &Env, image: &str) -> serde_json::Value {
    let v = env.json(&["inspect", image]);
    let cfg = &v["image"]["config"];
    summary(&cfg["config"], &cfg["history"])
}

fn podman_summary(p: &Podman, image: &str) -> serde_json::Value {
    let v = p.config(image);
    summary(&v["Config"], &v["History"])
}

fn diff_trees(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("only layerctl: {k} {v}")),
            Some(w) if w != v => out.push(format!("differs: {k}: layerctl {v} / podman {w}")),
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            out.push(format!("only podman: {k} {v}"));
        }
    }
    out
}

/// One base image in both stores: the same busybox rootfs, `podman import`ed and
/// `layerctl import`ed as localhost/bb.
fn bases(env: &Env, p: &Podman) {
    let rootfs = env.path("bb");
    busybox(&rootfs);
    fs::write(rootfs.join("etc/motd"), "base\n").unwrap();
    let tar = env.path("bb.tar");
    sh(
        env.dir.path(),
        &format!(
            "tar --numeric-owner --xattrs -C {} -cf {} .",
            rootfs.display(),
            tar.display()
        ),
    );
    p.ok(&["import", tar.to_str().unwrap(), "localhost/bb"]);
    env.ok(&["import", rootfs.to_str().unwrap(), "localhost/bb"]);
}

/// buildah 1.28 leaves in its RUN layers the empty mount points it binds files onto
/// (/etc/hostname, an empty /run) where the image had none; docker's builder (and
/// layerctl, whose init layer holds them outside the container) does not. Exactly those,
/// empty and absent from layerctl's tree, are left out of the comparison.
fn buildah_artifacts_out(
    mut t: BTreeMap<String, String>,
    mine: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    for (k, empty) in [
        ("etc/hostname", format!("file:{EMPTY} ")),
        ("etc/hosts", format!("file:{EMPTY} ")),
        ("etc/resolv.conf", format!("file:{EMPTY} ")),
        ("run", "dir ".to_string()),
    ] {
        let artifact = t.get(k).is_some_and(|v| v.starts_with(&empty))
            && !mine.contains_key(k)
            && !t.keys().any(|p| p.starts_with(&format!("{k}/")));
        if artifact {
            t.remove(k);
        }
    }
    t
}

const ORACLE: &str = r#"ARG BASE=localhost/bb
FROM ${BASE} AS build
ARG GREETING=hello
ENV OUT=/out DIR=${OUT:-/fallback}/sub
RUN mkdir -p $DIR && echo "$GREETING" > $DIR/greet && chown 1000:1000 $DIR/greet && ln -s greet $DIR/link
WORKDIR /build
RUN echo made > made.txt && mkdir -p /opt/lowerdir && echo shadow > /opt/lowerdir/old

FROM localhost/bb
ARG VERSION
ENV APP_VERSION=${VERSION:+v}${VERSION:-none} \
    HOME=/home/app
# a comment between instructions
COPY --from=build /fallback/sub/ /opt/from/
COPY --from=build /build/made.txt /opt/from/
COPY tree /opt/lowerdir/
COPY --chown=1000:1000 --chmod=640 conf.txt /etc/app/conf.txt
COPY *.md /docs/
RUN rm /etc/motd /opt/lowerdir/old && rm -r /home/app && echo "$VERSION" > /version
WORKDIR /srv
RUN touch ok && chmod 600 ok && ln ok ok.hard
USER app
LABEL org.example.name="layer ctl" version=$APP_VERSION
EXPOSE 8080 53/udp
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hi"]
"#;

fn oracle_context(dir: &Path) {
    write(&dir.join("Containerfile"), ORACLE);
    write(&dir.join("tree/new.txt"), "new in lowerdir\n");
    write(&dir.join("tree/sub/deep.txt"), "deep\n");
    std::os::unix::fs::symlink("new.txt", dir.join("tree/rel-link")).unwrap();
    write(&dir.join("conf.txt"), "key=value\n");
    write(&dir.join("a.md"), "# a\n");
    write(&dir.join("b.md"), "# b\n");
    write(&dir.join("not-copied.txt"), "x\n");
    sh(
        dir,
        "chmod 700 tree/sub && chmod 755 tree/new.txt && chown -R 1234:1234 tree",
    );
}

/// The same Containerfile (multi-stage, ARG/ENV expansion, COPY --from keeping owners,
/// COPY over an existing directory, --chown/--chmod, globs, a RUN deleting files of lower
/// layers, WORKDIR made by RUN, hard links) built by podman and by layerctl: the final
/// trees and the configs match.
#[test]
fn podman_build_oracle() {
    let env = Env::new();
    let p = Podman::new(&env);
    bases(&env, &p);
    let ctx = env.path("ctx");
    oracle_context(&ctx);
    p.build(&ctx, "localhost/oracle", &["--build-arg", "VERSION=1.2"]);
    let c = ctx.to_str().unwrap();
    env.ok(&["build", "-t", "oracle", "--build-arg", "VERSION=1.2", c]);

    let mine = layerctl_tree(&env, "oracle", "mine");
    let theirs = buildah_artifacts_out(p.tree("localhost/oracle"), &mine);
    let d = diff_trees(&mine, &theirs);
    assert!(d.is_empty(), "trees differ:\n{}", d.join("\n"));
    assert!(mine.contains_key("opt/from/greet") && mine.contains_key("srv/ok"));
    assert_eq!(
        layerctl_summary(&env, "oracle"),
        podman_summary(&p, "localhost/oracle")
    );

    // The first stage on its own (--target), with a different build arg.
    p.build(
        &ctx,
        "localhost/stage",
        &["--target", "build", "--build-arg", "GREETING=hey"],
    );
    env.ok(&[
        "build",
        "-t",
        "stage",
        "--target",
        "build",
        "--build-arg",
        "GREETING=hey",
        c,
    ]);
    let mine = layerctl_tree(&env, "stage", "stage");
    let d = diff_trees(
        &mine,
        &buildah_artifacts_out(p.tree("localhost/stage"), &mine),
    );
    assert!(d.is_empty(), "--target trees differ:\n{}", d.join("\n"));
    assert_eq!(
        layerctl_summary(&env, "stage"),
        podman_summary(&p, "localhost/stage")
    );
    env.fsck_clean();
}

fn build_out(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    assert!(
        o.status.success(),
        "layerctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The steps of a build's output, with whether each was reused: (step line, cached).
fn steps(out: &str) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = Vec::new();
    for l in out.lines() {
        if l.starts_with("STEP ") {
            v.push((l.to_string(), false));
        } else if l == "---> Using cache" {
            if let Some(last) = v.last_mut() {
                last.1 = true;
            }
        }
    }
    v
}

const CACHED: &str = r#"FROM localhost/bb
ENV A=1
COPY one.txt /one.txt
RUN cat /one.txt > /copy-of-one
COPY two.txt /two.txt
RUN echo run > /ran
CMD ["cat", "/ran"]
"#;

/// A rebuild reuses every step; touching one COPY source's content rebuilds that step and
/// the later ones only; a touch that changes only the mtime changes nothing; --no-cache
/// rebuilds all. Intermediate images are unnamed, chained by parent, and gc keeps them
/// while the final image is named.
#[test]
fn cache_reuse_and_invalidation() {
    let env = Env::new();
    let rootfs = env.path("bb");
    busybox(&rootfs);
    env.ok(&["import", rootfs.to_str().unwrap(), "localhost/bb"]);
    let ctx = env.path("ctx");
    write(&ctx.join("Containerfile"), CACHED);
    write(&ctx.join("one.txt"), "one\n");
    write(&ctx.join("two.txt"), "two\n");
    let c = ctx.to_str().unwrap();
    let first = build_out(&env, &["build", "-t", "app", c]);
    let s = steps(&first);
    assert_eq!(s.len(), 7, "{first}");
    assert!(s.iter().all(|(_, cached)| !cached), "{first}");
    assert!(first.contains("---> Running in "), "{first}");
    assert!(first.contains("Successfully built "), "{first}");
    assert!(first.contains("Successfully tagged app:latest"), "{first}");
    let id1 = env.json(&["inspect", "app"])["image"]["id"].clone();

    let again = build_out(&env, &["build", "-t", "app", c]);
    let s = steps(&again);
    assert!(s[1..].iter().all(|(_, cached)| *cached), "{again}");
    assert!(!again.contains("Running in"), "{again}");
    assert_eq!(env.json(&["inspect", "app"])["image"]["id"], id1);

    // Only the mtime changes: still every step from cache (mtimes are not in the key).
    sh(&ctx, "touch -d @2000000000 one.txt two.txt");
    let s = steps(&build_out(&env, &["build", "-t", "app", c]));
    assert!(s[1..].iter().all(|(_, cached)| *cached), "{s:?}");

    // The second COPY source's content changes: steps 1-4 reused, 5-7 run.
    write(&ctx.join("two.txt"), "two, changed\n");
    let out = build_out(&env, &["build", "-t", "app", c]);
    let s = steps(&out);
    let cached: Vec<bool> = s.iter().map(|x| x.1).collect();
    assert_eq!(
        cached,
        [false, true, true, true, false, false, false],
        "{out}"
    );
    let out = build_out(&env, &["run", "--rm", "app", "cat", "/two.txt"]);
    assert_eq!(out.trim(), "two, changed");

    let out = build_out(&env, &["build", "--no-cache", "-t", "app", c]);
    assert!(steps(&out)[1..].iter().all(|(_, cached)| !cached), "{out}");

    // -q prints only the id.
    let q = build_out(&env, &["build", "-q", c]);
    assert_eq!(q.lines().count(), 1, "{q}");
    assert!(q.trim().starts_with("sha256:"), "{q}");

    // History as docker writes it.
    let h = env.json(&["history", "app", "--json"]);
    let by: Vec<String> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["created_by"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(by[0], "/bin/sh -c #(nop)  CMD [\"cat\" \"/ran\"]");
    assert_eq!(by[1], "/bin/sh -c echo run > /ran");
    assert!(
        by[2].starts_with("/bin/sh -c #(nop) COPY file:") && by[2].ends_with(" in /two.txt "),
        "{}",
        by[2]
    );
    assert_eq!(by[5], "/bin/sh -c #(nop)  ENV A=1");

    // The table names each entry's image by the parent chain, truncates like docker.
    let table = env.ok(&["history", "app"]);
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("IMAGE"), "{table}");
    let app = env.json(&["inspect", "app"])["image"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rows[1].starts_with(&app[7..19]), "{table}");
    assert_eq!(rows.len(), 8, "{table}");
    assert!(!rows.iter().any(|r| r.contains("<missing>")), "{table}");
    assert!(table.contains("…"), "{table}");
    assert!(
        env.ok(&["history", "--no-trunc", "app"]).contains(&app),
        "{table}"
    );
    // Intermediate images are listed by images -a only.
    assert!(!env.ok(&["images"]).contains("<none>"));
    assert!(
        env.ok(&["images", "-a"])
            .lines()
            .filter(|l| l.starts_with("<none>"))
            .count()
            >= 6
    );
    // A loaded copy has no intermediate images here: <missing> below its top.
    let tar = env.path("app.tar");
    env.ok(&["save", "app", "-o", tar.to_str().unwrap()]);
    let other = Env::new();
    other.ok(&["load", tar.to_str().unwrap()]);
    let t = other.ok(&["history", "app"]);
    assert_eq!(
        t.lines().filter(|l| l.starts_with("<missing>")).count(),
        6,
        "{t}"
    );

    // gc keeps the cached chain of a named image; its steps are still hits after it.
    env.ok(&["gc"]);
    let s = steps(&build_out(&env, &["build", "-t", "app", c]));
    assert!(s[1..].iter().all(|(_, cached)| *cached), "{s:?}");

    // Once nothing names the result, gc removes the step images and their cache entries.
    let entries = |env: &Env| {
        fs::read_dir(env.root.join("build-cache"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().len() == 64)
            .count()
    };
    assert!(entries(&env) >= 6);
    env.ok(&["rmi", "app"]);
    let gc = env.ok(&["gc"]);
    assert!(gc.contains("build cache entr"), "{gc}");
    assert_eq!(entries(&env), 0);
    assert!(!env.ok(&["images", "-a"]).contains("<none>"));
    let s = steps(&build_out(&env, &["build", "-t", "app", c]));
    assert!(s[1..].iter().all(|(_, cached)| !cached), "{s:?}");
    env.fsck_clean();
}

/// A failing RUN stops the build naming the step, the instruction, the exit status and
/// the last output lines; its container is gone unless --keep-failed.
#[test]
fn failing_run_reports_and_cleans_up() {
    let env = Env::new();
    let rootfs = env.path("bb");
    busybox(&rootfs);
    env.ok(&["import", rootfs.to_str().unwrap(), "localhost/bb"]);
    let ctx = env.path("ctx");
    write(
        &ctx.join("Containerfile"),
        "FROM localhost/bb\nENV X=1\nRUN echo first line && echo the-last-words >&2 && exit 3\nRUN echo never\n",
    );
    let c = ctx.to_str().unwrap();
    let err = env.fails(&["build", c], "step 3/4");
    assert!(
        err.contains("RUN echo first line")
            && err.contains("status 3")
            && err.contains("the-last-words")
            && err.contains("container removed"),
        "{err}"
    );
    let containers = |env: &Env| env.json(&["ps", "--json"]).as_array().unwrap().len();
    assert_eq!(containers(&env), 0);
    let err = env.fails(&["build", "--keep-failed", c], "status 3");
    assert!(err.contains("kept"), "{err}");
    assert_eq!(containers(&env), 1);
}

/// The same Containerfile and context in two stores with --timestamp 0 (and with
/// SOURCE_DATE_EPOCH) give the same image id; every created time is the timestamp.
#[test]
fn reproducible_with_timestamp() {
    let a = Env::new();
    let b = Env::new();
    let ctx = a.path("ctx");
    write(&ctx.join("Containerfile"), CACHED);
    write(&ctx.join("one.txt"), "one\n");
    write(&ctx.join("two.txt"), "two\n");
    let c = ctx.to_str().unwrap();
    for env in [&a, &b] {
        let rootfs = env.path("bb");
        busybox(&rootfs);
        env.ok(&["import", rootfs.to_str().unwrap(), "localhost/bb"]);
    }
    let ida = a.ok(&["build", "-q", "--timestamp", "0", c]);
    // Later, so that a clock-dependent time would differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let idb = b.ok(&["build", "-q", "--timestamp", "0", "--no-cache", c]);
    let base_a = a.json(&["inspect", "localhost/bb"])["image"]["id"].clone();
    let base_b = b.json(&["inspect", "localhost/bb"])["image"]["id"].clone();
    // The imported bases differ only in their import time: compare what build adds.
    let strip = |env: &Env, id: &str| {
        let v = env.json(&["inspect", id]);
        let cfg = &v["image"]["config"];
        let hist: Vec<_> = cfg["history"].as_array().unwrap()[1..].to_vec();
        (
            cfg["rootfs"]["diff_ids"].clone(),
            serde_json::json!(hist),
            cfg["created"].clone(),
        )
    };
    assert_eq!(strip(&a, &ida), strip(&b, &idb));
    let (_, hist, created) = strip(&a, &ida);
    assert_eq!(created, "1970-01-01T00:00:00.000000000Z");
    assert!(hist
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["created"] == "1970-01-01T00:00:00.000000000Z"));
    // Same base id too (both imported from the same tree in one second or not): when
    // the bases are equal the ids are equal.
    if base_a == base_b {
        assert_eq!(ida, idb);
    }
    // FROM scratch has no import time at all: the whole id must match.
    let sctx = a.path("sctx");
    write(
        &sctx.join("Containerfile"),
        "FROM scratch\nCOPY one.txt /one\nCOPY d /d\nENV E=1\n",
    );
    write(&sctx.join("one.txt"), "1\n");
    write(&sctx.join("d/x"), "x\n");
    let s = sctx.to_str().unwrap();
    let x = a.ok(&["build", "-q", "--timestamp", "0", s]);
    let mut cmd = b.cmd(&["build", "-q", s]);
    cmd.env("SOURCE_DATE_EPOCH", "0");
    let o: Output = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), x);
}

/// Heredocs (RUN and COPY), .dockerignore with `!` exceptions, a `..` source and a
/// symlinked directory that would leave the context, ADD of a local tar (extracted), ADD
/// of an unreachable URL, FROM scratch.
#[test]
fn heredocs_ignore_rules_and_confinement() {
    let env = Env::new();
    let rootfs = env.path("bb");
    busybox(&rootfs);
    env.ok(&["import", rootfs.to_str().unwrap(), "localhost/bb"]);
    let ctx = env.path("ctx");
    write(
        &ctx.join("Containerfile"),
        "# syntax=docker/dockerfile:1.4\nFROM localhost/bb\nARG WHO=world\nRUN <<EOF\necho hello $WHO > /greeting\necho second >> /greeting\nEOF\nCOPY <<EOF /etc/notes.txt\nliteral $WHO\nEOF\nCOPY logs/ /logs/\nADD pack.tar.gz /unpacked/\n",
    );
    write(&ctx.join(".dockerignore"), "logs/*.log\n!logs/keep.log\n");
    write(&ctx.join("logs/a.log"), "a\n");
    write(&ctx.join("logs/keep.log"), "keep\n");
    write(&ctx.join("logs/readme"), "r\n");
    let packed = env.path("packed");
    write(&packed.join("inner/file.txt"), "from the tar\n");
    sh(
        env.dir.path(),
        &format!(
            "tar -C {} -czf {} inner",
            packed.display(),
            ctx.join("pack.tar.gz").display()
        ),
    );
    let c = ctx.to_str().unwrap();
    env.ok(&["build", "-t", "hd", c]);
    let out = build_out(
        &env,
        &[
            "run",
            "--rm",
            "hd",
            "sh",
            "-c",
            "cat /greeting /etc/notes.txt; ls /logs; cat /unpacked/inner/file.txt",
        ],
    );
    assert_eq!(
        out,
        "hello world\nsecond\nliteral world\nkeep.log\nreadme\nfrom the tar\n"
    );

    // Sources outside the context.
    let outside = env.path("outside");
    write(&outside.join("secret"), "secret\n");
    std::os::unix::fs::symlink(&outside, ctx.join("escape")).unwrap();
    let f = env.path("F1");
    write(&f, "FROM localhost/bb\nCOPY ../outside/secret /s\n");
    env.fails(
        &["build", "-f", f.to_str().unwrap(), c],
        "outside the build context",
    );
    write(&f, "FROM localhost/bb\nCOPY escape/secret /s\n");
    env.fails(&["build", "-f", f.to_str().unwrap(), c], "symlink");
    // A symlink source is copied as the link, never followed.
    write(&f, "FROM localhost/bb\nCOPY escape /escape\n");
    env.ok(&["build", "-t", "link", "-f", f.to_str().unwrap(), c]);
    let out = build_out(
        &env,
        &[
            "run",
            "--rm",
            "link",
            "sh",
            "-c",
            "readlink /escape; cat /escape/secret 2>&1 || true",
        ],
    );
    assert!(out.starts_with(outside.to_str().unwrap()), "{out}");
    assert!(
        !out.contains("secret\n") || out.contains("No such file"),
        "{out}"
    );
    // An ignored file is not a source.
    write(&f, "FROM localhost/bb\nCOPY logs/a.log /a.log\n");
    env.fails(&["build", "-f", f.to_str().unwrap(), c], "excluded");
    // ADD of a URL whose host is unreachable (no network here).
    write(&f, "FROM localhost/bb\nADD http://192.0.2.1:9/x.tar /x\n");
    env.fails(&["build", "-f", f.to_str().unwrap(), c], "cannot reach");
    // The Containerfile from stdin, FROM scratch.
    let mut cmd = env.cmd(&["build", "-q", "-t", "scratchy", "-f", "-", c]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM scratch\nCOPY logs /\nCMD [\"x\"]\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let v = env.json(&["inspect", "scratchy"]);
    assert_eq!(
        v["image"]["config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// `scripts/bench-build --quick` as a smoke run (CI): it runs against podman build, with
/// this build's binaries and a small context, and prints every figure.
#[test]
fn bench_build_smoke() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench-build");
    let o = Command::new(&script)
        .args(["--quick", "--files", "300", "--layerctl"])
        .arg(layerctl_bin())
        .arg("--layerfs")
        .arg(layerfs_bin())
        .output()
        .expect("running scripts/bench-build");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "bench-build failed: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for row in [
        "fully cached rebuild, 10 steps",
        "rebuild after touching one COPY source",
        "per-RUN overhead",
        "COPY of 300 files, cold",
    ] {
        assert!(out.contains(row), "{row} missing from:\n{out}");
    }
    // The touched COPY is step 5 of 10: steps 5-10 run, in both builders.
    let touched = out
        .lines()
        .find(|l| l.contains("steps that ran"))
        .unwrap_or_default();
    assert_eq!(
        touched.split_whitespace().rev().take(2).collect::<Vec<_>>(),
        ["6", "6"],
        "{out}"
    );
}

/// The metadata instructions land in the config as docker records them; SHELL changes how
/// later RUNs run; an ENTRYPOINT drops the inherited CMD; `# escape=` and continuations.
#[test]
fn metadata_instructions() {
    let env = Env::new();
    let rootfs = env.path("bb");
    busybox(&rootfs);
    env.ok(&["import", rootfs.to_str().unwrap(), "localhost/bb"]);
    let ctx = env.path("ctx");
    write(
        &ctx.join("Containerfile"),
        "# escape=`\nFROM localhost/bb\nCMD [\"old\"]\nENTRYPOINT [\"/bin/sh\"]\nVOLUME /data\nVOLUME [\"/v1\", \"/v2\"]\nSTOPSIGNAL SIGTERM\nHEALTHCHECK --interval=30s --retries=3 CMD wget -q localhost || exit 1\nONBUILD RUN echo child\nSHELL [\"/bin/sh\", \"-xc\"]\nRUN echo `\n  shelled > /shelled\nUSER 1000:1000\nMAINTAINER someone\n",
    );
    let c = ctx.to_str().unwrap();
    env.ok(&["build", "-t", "meta", c]);
    let v = env.json(&["inspect", "meta"]);
    let cfg = &v["image"]["config"]["config"];
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["/bin/sh"]));
    assert!(cfg["Cmd"].is_null(), "{cfg}");
    let vols: Vec<&String> = cfg["Volumes"].as_object().unwrap().keys().collect();
    assert_eq!(vols, ["/data", "/v1", "/v2"]);
    assert_eq!(cfg["StopSignal"], "SIGTERM");
    assert_eq!(
        cfg["Healthcheck"],
        serde_json::json!({"Test": ["CMD-SHELL", "wget -q localhost || exit 1"], "Interval": 30_000_000_000u64, "Retries": 3})
    );
    assert_eq!(cfg["OnBuild"], serde_json::json!(["RUN echo child"]));
    assert_eq!(cfg["Shell"], serde_json::json!(["/bin/sh", "-xc"]));
    assert_eq!(cfg["User"], "1000:1000");
    assert_eq!(v["image"]["config"]["author"], "someone");
    let h = env.json(&["history", "meta", "--json"]);
    let run = h
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["empty_layer"] == false && e["created_by"].as_str().unwrap().contains("shelled")
        })
        .unwrap()
        .clone();
    assert_eq!(run["created_by"], "/bin/sh -xc echo   shelled > /shelled");
    let out = build_out(
        &env,
        &[
            "run",
            "--rm",
            "--entrypoint",
            "",
            "-u",
            "0",
            "meta",
            "cat",
            "/shelled",
        ],
    );
    assert_eq!(out, "shelled\n");

    // A build FROM an image with triggers runs them first, and the result has none.
    let child = env.path("child");
    write(
        &child.join("Containerfile"),
        "FROM trig\nRUN test -f /child-ran\n",
    );
    write(
        &ctx.join("Containerfile"),
        "FROM localhost/bb\nONBUILD RUN echo x > /tmp/t && cp /tmp/t /child-ran\nONBUILD ENV TRIGGERED=1\n",
    );
    env.ok(&["build", "-t", "trig", c]);
    let out = build_out(&env, &["build", "-t", "kid", child.to_str().unwrap()]);
    assert!(out.contains("# Executing 2 build triggers"), "{out}");
    let v = env.json(&["inspect", "kid"]);
    let cfg = &v["image"]["config"]["config"];
    assert!(cfg["OnBuild"].is_null(), "{cfg}");
    assert!(
        cfg["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "TRIGGERED=1"),
        "{cfg}"
    );
}

/// As an ordinary user (rootless), with crun and with bubblewrap: RUN, COPY with
/// --chown, a cached rebuild, and the result read back through `run`.
#[test]
fn rootless_build() {
    let user = rootless::fuse_user();
    let dir = rootless::UserDir::new(&user);
    busybox(&dir.p("bb"));
    write(
        &dir.p("ctx/Containerfile"),
        "FROM bb:1\nCOPY --chown=1000:1000 f.txt /home/app/f.txt\nRUN echo ran > /ran && id -u > /uid\nUSER app\nRUN id -u > /home/app/uid\n",
    );
    write(&dir.p("ctx/f.txt"), "f\n");
    rootless::chown_tree(dir.path(), user.uid, user.gid);
    let script = format!(
        r#"{prelude}
export LAYERFS_ROOT={d}/store
layerctl import {d}/bb bb:1 >/dev/null
for rt in crun bwrap; do
    layerctl build --runtime $rt --no-cache -t img-$rt {d}/ctx >{d}/out-$rt
    layerctl build --runtime $rt -t img-$rt {d}/ctx >{d}/again-$rt
    test "$(grep -c 'Using cache' {d}/again-$rt)" = 4
    test "$(layerctl run --rm --runtime $rt img-$rt cat /ran /uid /home/app/uid)" = "ran
0
1000"
    test "$(layerctl run --rm --runtime $rt img-$rt stat -c %u:%g /home/app/f.txt)" = "1000:1000"
done
layerctl fsck | grep -q "store is clean"
"#,
        prelude = rootless::SH_PRELUDE,
        d = dir.path().display()
    );
    rootless::user_ok(&user, &script, &[]);
}

/// RUN has a network namespace of its own (loopback only) unless `--network host`.
#[test]
fn network_none_unless_host() {
    let env = Env::new();
    let rootfs = env.path("bb");
    busybox(&rootfs);
    env.ok(&["import", rootfs.to_str().unwrap(), "localhost/bb"]);
    let ctx = env.path("ctx");
    write(
        &ctx.join("Containerfile"),
        "FROM localhost/bb\nRUN tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort > /ifaces\n",
    );
    let c = ctx.to_str().unwrap();
    env.ok(&["build", "-t", "none", c]);
    env.ok(&["build", "--no-cache", "--network", "host", "-t", "host", c]);
    let ifaces = |img: &str| {
        build_out(
            &env,
            &["run", "--rm", "--network", "host", img, "cat", "/ifaces"],
        )
    };
    assert_eq!(ifaces("none"), "lo\n");
    let host: Vec<String> = fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim().to_string())
        .collect();
    let mut host = host;
    host.sort();
    assert_eq!(ifaces("host"), format!("{}\n", host.join("\n")));
    assert!(
        host.len() > 1,
        "the host has only loopback: the test cannot tell"
    );
}
