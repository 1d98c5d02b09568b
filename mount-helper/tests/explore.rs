//! `layerctl explore`: the report on an image built through real mounts and commits with
//! known overwrites, deletes and an opaque directory replacement, checked against dive's
//! formula computed here from what the test did; the `--ci` rules at their thresholds;
//! the same report from the store, from OCI layouts and docker archives layerctl wrote,
//! and from a zstd layout skopeo wrote; the terminal UI driven in tmux.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const BIG: usize = 1_000_000;
const SMALL: usize = 500_000;
const LIB_A: usize = 300_000;
const LIB_B: usize = 200_000;
const NEW_A: usize = 50_000;
const NEW_C: usize = 70_000;
const CONF: usize = 100;

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// base:1 (imported), then three commits through mounts: overwrite data/big.bin, delete
/// data/small.bin, replace app/lib (rm -r, mkdir: an opaque directory) with a.txt and c.txt.
fn build(env: &Env) {
    let base = env.path("base");
    for d in ["data", "app/lib", "etc"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    fs::write(base.join("data/big.bin"), bytes(BIG, 1)).unwrap();
    fs::write(base.join("data/small.bin"), bytes(SMALL, 2)).unwrap();
    fs::write(base.join("app/lib/a.txt"), bytes(LIB_A, 3)).unwrap();
    fs::write(base.join("app/lib/b.txt"), bytes(LIB_B, 4)).unwrap();
    fs::write(base.join("etc/conf"), bytes(CONF, 5)).unwrap();
    // A second name: its tar entry is a hard link (size 0) after the first name.
    fs::hard_link(base.join("etc/conf"), base.join("etc/conf.link")).unwrap();
    env.ok(&["import", base.to_str().unwrap(), "demo:1"]);

    let step = |from: &str, to: &str, name: &str, change: &dyn Fn(&Path)| {
        let (mnt, _guard) = env.mount_new(from, name, name);
        change(&mnt);
        env.ok(&["umount", name]);
        env.ok(&["commit", name, to]);
        env.ok(&["rm", name]);
    };
    step("demo:1", "demo:2", "c1", &|m| {
        fs::write(m.join("data/big.bin"), bytes(BIG, 9)).unwrap()
    });
    step("demo:2", "demo:3", "c2", &|m| {
        fs::remove_file(m.join("data/small.bin")).unwrap()
    });
    step("demo:3", "demo:4", "c3", &|m| {
        fs::remove_dir_all(m.join("app/lib")).unwrap();
        fs::create_dir(m.join("app/lib")).unwrap();
        fs::write(m.join("app/lib/a.txt"), bytes(NEW_A, 7)).unwrap();
        fs::write(m.join("app/lib/c.txt"), bytes(NEW_C, 8)).unwrap();
    });
}

/// dive's score and wasted bytes from (path, layer, size) sightings, written out here
/// independently of layerctl: per path the smallest and the summed size; score = sum of
/// smallest / sum of summed; wasted = summed size of the paths seen in 2+ layers.
/// Score, wasted bytes, and per inefficient path its summed size and layers.
type Expected = (f64, u64, BTreeMap<String, (u64, Vec<u32>)>);

fn dive_formula(sightings: &[(&str, u32, u64)]) -> Expected {
    let mut per: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
    for (p, l, s) in sightings {
        per.entry(p.to_string()).or_default().push((*l, *s));
    }
    let (mut min_sum, mut cum_sum, mut wasted) = (0u64, 0u64, 0u64);
    let mut ineff = BTreeMap::new();
    for (p, v) in &per {
        let cum: u64 = v.iter().map(|x| x.1).sum();
        min_sum += v.iter().map(|x| x.1).min().unwrap();
        cum_sum += cum;
        if v.len() > 1 {
            wasted += cum;
            ineff.insert(p.clone(), (cum, v.iter().map(|x| x.0).collect()));
        }
    }
    (min_sum as f64 / cum_sum as f64, wasted, ineff)
}

/// The image's sightings as dive counts them: every leaf of each layer. Deleting a file
/// is a whiteout sized 0; the opaque app/lib counts as `.wh.lib` would, sized as what it
/// hid (a.txt and b.txt of the base).
fn expected() -> Expected {
    let s = |n: usize| n as u64;
    dive_formula(&[
        ("/data/big.bin", 0, s(BIG)),
        ("/data/small.bin", 0, s(SMALL)),
        ("/app/lib/a.txt", 0, s(LIB_A)),
        ("/app/lib/b.txt", 0, s(LIB_B)),
        ("/etc/conf", 0, s(CONF)),
        ("/etc/conf.link", 0, 0),
        ("/data/big.bin", 1, s(BIG)),
        ("/data/small.bin", 2, 0),
        ("/app/lib", 3, s(LIB_A + LIB_B)),
        ("/app/lib/a.txt", 3, s(NEW_A)),
        ("/app/lib/c.txt", 3, s(NEW_C)),
    ])
}

fn changes(layer: &Value) -> Vec<String> {
    layer["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c["kind"].as_str().unwrap(),
                c["path"].as_str().unwrap(),
                c["size"]
            )
        })
        .collect()
}

#[test]
fn report_matches_dive_formula_on_known_overwrites_and_deletes() {
    let env = Env::new();
    build(&env);
    let (score, wasted, ineff) = expected();
    // Hand check of the expected numbers: 2 MB (both copies of big.bin) + 500 kB (the
    // deleted small.bin) + 350 kB (a.txt before and after the replacement).
    assert_eq!(wasted, 2_850_000);
    let v = env.json(&["explore", "--json", "--changes", "demo:4"]);
    assert_eq!(v["efficiency"].as_f64().unwrap(), score, "{v:#}");
    assert_eq!(v["wasted_bytes"], wasted);
    let got: BTreeMap<String, (u64, Vec<u32>)> = v["inefficient_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                (
                    f["wasted_bytes"].as_u64().unwrap(),
                    f["layers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|l| l.as_u64().unwrap() as u32)
                        .collect(),
                ),
            )
        })
        .collect();
    assert_eq!(got, ineff);
    // Largest first.
    assert_eq!(v["inefficient_files"][0]["path"], "/data/big.bin");

    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    let sizes: Vec<u64> = layers.iter().map(|l| l["size"].as_u64().unwrap()).collect();
    assert_eq!(
        sizes,
        vec![
            (BIG + SMALL + LIB_A + LIB_B + CONF) as u64,
            BIG as u64,
            0,
            (NEW_A + NEW_C) as u64
        ]
    );
    assert_eq!(
        v["user_size_bytes"].as_u64().unwrap(),
        (BIG + NEW_A + NEW_C) as u64
    );
    assert_eq!(
        v["user_wasted_percent"].as_f64().unwrap(),
        wasted as f64 / (BIG + NEW_A + NEW_C) as f64
    );
    assert_eq!(
        changes(&layers[1]),
        vec!["C /data 0", &format!("C /data/big.bin {BIG}")]
    );
    assert_eq!(
        changes(&layers[2]),
        vec!["C /data 0", &format!("D /data/small.bin {SMALL}")]
    );
    assert_eq!(
        changes(&layers[3]),
        vec![
            "C /app 0".to_string(),
            "C /app/lib 0".to_string(),
            format!("C /app/lib/a.txt {NEW_A}"),
            format!("D /app/lib/b.txt {LIB_B}"),
            format!("A /app/lib/c.txt {NEW_C}"),
        ]
    );
    assert_eq!(layers[2]["removed"]["bytes"], SMALL as u64);
    assert_eq!(layers[0]["added"]["count"], 10);
    let base = changes(&layers[0]);
    assert!(base.contains(&format!("A /etc/conf {CONF}")), "{base:?}");
    assert!(base.contains(&"A /etc/conf.link 0".to_string()), "{base:?}");
    for l in layers {
        assert!(l["diff_id"].as_str().unwrap().starts_with("sha256:"));
        assert!(l["created_by"].as_str().unwrap().starts_with("layerctl "));
    }
    // No rules without --ci.
    assert!(v.get("rules").is_none());

    // The text report says the same.
    let o = env.run(&[
        "explore",
        "--ci",
        "demo:4",
        "--highest-user-wasted-percent",
        "off",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("efficiency: {:.4} %", score * 100.0)),
        "{text}"
    );
    assert!(
        text.contains("wastedBytes: 2850000 bytes (2.9MB)"),
        "{text}"
    );
    assert!(text.contains("/data/small.bin"), "{text}");
}

#[test]
fn ci_exit_codes_at_thresholds() {
    let env = Env::new();
    build(&env);
    let ci = |args: &[&str]| -> (i32, String) {
        let mut a = vec![
            "explore",
            "--ci",
            "demo:4",
            "--highest-user-wasted-percent",
            "disabled",
        ];
        a.extend_from_slice(args);
        let o = env.run(&a);
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (score, _, _) = expected();
    assert!(score > 0.50 && score < 0.51);
    // Efficiency: failing below the threshold only.
    let (c, out) = ci(&["--lowest-efficiency", "0.5"]);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("PASS: lowestEfficiency"), "{out}");
    assert!(out.contains("Result: PASS"), "{out}");
    let (c, out) = ci(&["--lowest-efficiency", "0.51"]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("FAIL: lowestEfficiency: image efficiency is too low"),
        "{out}"
    );
    // Default 0.9, dive's.
    assert_eq!(ci(&[]).0, 1);
    // Wasted bytes: failing above the threshold only, in dive's units.
    let wasted = |t: &str| ci(&["--lowest-efficiency", "off", "--highest-wasted-bytes", t]);
    assert_eq!(wasted("2850000").0, 0);
    assert_eq!(wasted("2849999").0, 1);
    assert_eq!(wasted("2.85MB").0, 0);
    assert_eq!(wasted("2.84 MB").0, 1);
    assert_eq!(wasted("3MiB").0, 0);
    let (c, out) = wasted("2MB");
    assert_eq!(c, 1);
    assert!(
        out.contains("FAIL: highestWastedBytes: too many bytes wasted (wasted-bytes=2850000 > threshold=2000000)"),
        "{out}"
    );
    assert!(out.contains("SKIP: highestUserWastedPercent"), "{out}");
    // dive's default user-wasted rule (0.1) fails here: 2.85 MB over 1.12 MB added.
    let o = env.run(&["explore", "--ci", "demo:4", "--lowest-efficiency", "off"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL: highestUserWastedPercent"));
    // --ci --json: the rules' results and the verdict.
    let o = env.run(&[
        "explore",
        "--ci",
        "--json",
        "demo:4",
        "--lowest-efficiency",
        "0.4",
        "--highest-wasted-bytes",
        "20MB",
        "--highest-user-wasted-percent",
        "off",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pass"], true);
    let rules: Vec<(String, String)> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        vec![
            ("lowestEfficiency".to_string(), "pass".to_string()),
            ("highestWastedBytes".to_string(), "pass".to_string()),
            (
                "highestUserWastedPercent".to_string(),
                "disabled".to_string()
            ),
        ]
    );
    // The base image alone wastes nothing and passes dive's defaults.
    assert_eq!(
        env.run(&["explore", "--ci", "demo:1"]).status.code(),
        Some(0)
    );
    // Bad thresholds are one-line errors naming the flag.
    env.fails(
        &[
            "explore",
            "--ci",
            "demo:4",
            "--highest-wasted-bytes",
            "lots",
        ],
        "--highest-wasted-bytes",
    );
    env.fails(
        &["explore", "--ci", "demo:4", "--lowest-efficiency", "2"],
        "--lowest-efficiency",
    );
}

fn report_without_name(env: &Env, src: &str) -> Value {
    let mut v = env.json(&["explore", "--json", "--changes", src]);
    let obj = v.as_object_mut().unwrap();
    obj.remove("image");
    v
}

#[test]
fn same_report_from_store_oci_layouts_and_docker_archives() {
    let env = Env::new();
    build(&env);
    let id = env.ok(&["inspect", "demo:4"]);
    let id: Value = serde_json::from_str(&id).unwrap();
    let want = report_without_name(&env, "demo:4");
    let oci = env.path("oci");
    let oci_tar = env.path("oci.tar");
    let docker = env.path("docker.tar");
    env.ok(&[
        "save",
        "--format",
        "oci-dir",
        "-o",
        oci.to_str().unwrap(),
        "demo:4",
    ]);
    env.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        oci_tar.to_str().unwrap(),
        "demo:4",
    ]);
    env.ok(&["save", "-o", docker.to_str().unwrap(), "demo:4"]);
    // A docker archive compressed as a whole, and a layout another tool wrote with zstd
    // layers.
    let gz = env.path("docker.tar.gz");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", docker.display(), gz.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let zoci = env.path("zoci");
    let o = Command::new("skopeo")
        .args(["copy", "--dest-compress-format", "zstd"])
        .arg(format!("oci:{}", oci.display()))
        .arg(format!("oci:{}", zoci.display()))
        .output()
        .expect("skopeo must be installed for this test");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let man = fs::read_to_string(zoci.join("index.json")).unwrap();
    let man: Value = serde_json::from_str(&man).unwrap();
    let mdig = man["manifests"][0]["digest"].as_str().unwrap();
    let m = fs::read_to_string(zoci.join("blobs/sha256").join(&mdig[7..])).unwrap();
    assert!(m.contains("tar+zstd"), "{m}");

    for src in [&oci, &oci_tar, &docker, &gz, &zoci] {
        let got = report_without_name(&env, src.to_str().unwrap());
        assert_eq!(got, want, "report from {}", src.display());
    }
    // The id is the image's (its config digest) whatever the source.
    let store_id = want["id"].as_str().unwrap();
    assert!(id.to_string().contains(store_id), "{id}");

    // A damaged layer is refused, naming the layer: what is shown is what the image names.
    let blobs = oci.join("blobs/sha256");
    let idx: Value =
        serde_json::from_str(&fs::read_to_string(oci.join("index.json")).unwrap()).unwrap();
    let mdig = idx["manifests"][0]["digest"].as_str().unwrap();
    let m: Value =
        serde_json::from_str(&fs::read_to_string(blobs.join(&mdig[7..])).unwrap()).unwrap();
    let l1 = m["layers"][1]["digest"].as_str().unwrap();
    let other = m["layers"][2]["digest"].as_str().unwrap();
    fs::copy(blobs.join(&other[7..]), blobs.join(&l1[7..])).unwrap();
    env.fails(
        &["explore", "--json", oci.to_str().unwrap()],
        "the image config says",
    );
    env.fails(&["explore", "--json", "no-such-image"], "no such image");
}

#[test]
fn ui_needs_a_terminal() {
    let env = Env::new();
    build_small(&env);
    env.fails(&["explore", "small:1"], "needs a terminal");
}

fn build_small(env: &Env) {
    let base = env.path("small");
    fs::create_dir_all(base.join("d")).unwrap();
    fs::write(base.join("d/f"), b"x").unwrap();
    env.ok(&["import", base.to_str().unwrap(), "small:1"]);
}

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux must be installed for this test")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "ui"]).stdout).into_owned()
    }

    /// Waits until the screen satisfies `ok` (the UI redraws after each key); fails
    /// loudly with the last screen if it never does.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "UI never showed {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", "ui"];
        a.extend_from_slice(keys);
        assert!(self.cmd(&a).status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The row of the tree pane that shows `name`, if any.
fn tree_row<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.contains(name))
}

#[test]
fn tui_in_tmux_navigate_filter_quit() {
    let env = Env::new();
    build(&env);
    let t = Tmux {
        socket: format!("layerctl-explore-{}", std::process::id()),
    };
    let cmdline = format!(
        "{} --root {} explore demo:4; echo EXITED:$?; read x",
        layerctl_bin().display(),
        env.root.display()
    );
    let o = t.cmd(&[
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "24",
        "-s",
        "ui",
        &cmdline,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // First screen: four layers, layer 0's changes, the keys at the bottom, in 80x24.
    let s = t.wait("the first screen", |s| s.contains("Layer 0 changes"));
    assert!(s.contains("Layers (4)"), "{s}");
    assert!(s.contains("q quit"), "{s}");
    assert!(s.contains("efficiency 50.28%"), "{s}");
    assert!(s.lines().all(|l| l.chars().count() <= 80), "{s}");
    assert!(s.lines().count() <= 24, "{s}");

    // Down twice: layer 2, which deletes small.bin.
    t.keys(&["Down", "Down"]);
    let s = t.wait("layer 2", |s| s.contains("Layer 2 changes"));
    let row = tree_row(&s, "small.bin").unwrap_or_else(|| panic!("{s}"));
    assert!(row.contains("D 500.0kB"), "{row}");
    assert!(tree_row(&s, "big.bin").is_none(), "{s}");

    // Filter removals out: nothing left to show in this layer.
    t.keys(&["d"]);
    let s = t.wait("the filter", |s| s.contains("[A C U]"));
    assert!(tree_row(&s, "small.bin").is_none(), "{s}");
    assert!(s.contains("nothing to show"), "{s}");
    t.keys(&["d"]);
    t.wait("the filter back", |s| tree_row(s, "small.bin").is_some());

    // The whole image up to layer 3: unchanged files too, the replaced directory's old
    // b.txt marked removed, the new c.txt added.
    t.keys(&["Down", "m"]);
    let s = t.wait("the image view", |s| s.contains("Image up to layer 3"));
    assert!(
        tree_row(&s, "big.bin").is_some_and(|r| !r.contains("A ") && !r.contains("D ")),
        "{s}"
    );
    assert!(
        tree_row(&s, "b.txt").is_some_and(|r| r.contains("D 200.0kB")),
        "{s}"
    );
    assert!(
        tree_row(&s, "c.txt").is_some_and(|r| r.contains("A  70.0kB")),
        "{s}"
    );
    assert!(
        tree_row(&s, "conf.link").is_some_and(|r| r.contains("link to /etc/conf")),
        "{s}"
    );
    // Hide unchanged files: big.bin goes, the changes stay.
    t.keys(&["u"]);
    let s = t.wait("unchanged hidden", |s| s.contains("[A C D]"));
    assert!(tree_row(&s, "big.bin").is_none(), "{s}");
    assert!(tree_row(&s, "c.txt").is_some(), "{s}");

    // Search.
    t.keys(&["u", "/", "c", "o", "n", "f", "Enter"]);
    let s = t.wait("the search", |s| s.contains("] /conf "));
    assert!(tree_row(&s, " conf").is_some(), "{s}");
    assert!(tree_row(&s, "big.bin").is_none(), "{s}");

    // Collapse: into the tree, fold etc/.
    t.keys(&["Tab", "Home", "Left"]);
    let s = t.wait("the fold", |s| s.contains("▸ etc/"));
    assert!(tree_row(&s, " conf").is_none(), "{s}");

    t.keys(&["q"]);
    let s = t.wait("the exit", |s| s.contains("EXITED:"));
    assert!(s.contains("EXITED:0"), "{s}");
}

/// A FIFO given as the path, or standing in for a blob, is refused, never waited on.
#[test]
fn fifos_are_refused_not_opened() {
    let env = Env::new();
    build_small(&env);
    let fifo = env.path("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    env.fails(
        &["explore", "--ci", fifo.to_str().unwrap()],
        "neither a directory nor a regular file",
    );
    let oci = env.path("oci");
    env.ok(&[
        "save",
        "--format",
        "oci-dir",
        "-o",
        oci.to_str().unwrap(),
        "small:1",
    ]);
    let idx: Value =
        serde_json::from_str(&fs::read_to_string(oci.join("index.json")).unwrap()).unwrap();
    let m = oci
        .join("blobs/sha256")
        .join(&idx["manifests"][0]["digest"].as_str().unwrap()[7..]);
    fs::remove_file(&m).unwrap();
    assert!(Command::new("mkfifo").arg(&m).status().unwrap().success());
    env.fails(
        &["explore", "--ci", oci.to_str().unwrap()],
        "not a regular file",
    );
}

/// An image another tool wrote: buildah (vfs storage, no opaque directories: its diff
/// writes a `.wh.` file for every name gone) makes one layer on top of the store's base
/// with the same three changes. Its report follows dive's formula for that encoding: here
/// the replaced directory's b.txt is a whiteout of a file, so its 200 kB count as waste.
#[test]
fn foreign_image_written_by_buildah() {
    let env = Env::new();
    build(&env);
    let base_tar = env.path("base.tar");
    env.ok(&["save", "-o", base_tar.to_str().unwrap(), "demo:1"]);
    let root = env.path("buildah-root");
    let run = env.path("buildah-run");
    let buildah = |args: &[&str]| -> String {
        let o = Command::new("buildah")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&run)
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("buildah must be installed for this test");
        assert!(
            o.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let ctr = buildah(&["from", &format!("docker-archive:{}", base_tar.display())]);
    let ctr = ctr.lines().last().unwrap().to_string();
    let mnt = std::path::PathBuf::from(buildah(&["mount", &ctr]));
    fs::write(mnt.join("data/big.bin"), bytes(BIG, 9)).unwrap();
    // buildah's vfs diff tells a change by size and mtime, with mtimes that match to the
    // second counting as equal (tar keeps seconds only): the rewrite of a same-size file
    // gets a time of its own.
    fs::File::options()
        .write(true)
        .open(mnt.join("data/big.bin"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
        .unwrap();
    fs::remove_file(mnt.join("data/small.bin")).unwrap();
    fs::remove_dir_all(mnt.join("app/lib")).unwrap();
    fs::create_dir(mnt.join("app/lib")).unwrap();
    fs::write(mnt.join("app/lib/a.txt"), bytes(NEW_A, 7)).unwrap();
    fs::write(mnt.join("app/lib/c.txt"), bytes(NEW_C, 8)).unwrap();
    let out = env.path("buildah.tar");
    buildah(&["commit", &ctr, &format!("oci-archive:{}", out.display())]);

    let v = env.json(&["explore", "--json", "--changes", out.to_str().unwrap()]);
    let s = |n: usize| n as u64;
    let (score, wasted, ineff) = dive_formula(&[
        ("/data/big.bin", 0, s(BIG)),
        ("/data/small.bin", 0, s(SMALL)),
        ("/app/lib/a.txt", 0, s(LIB_A)),
        ("/app/lib/b.txt", 0, s(LIB_B)),
        ("/etc/conf", 0, s(CONF)),
        ("/etc/conf.link", 0, 0),
        ("/data/big.bin", 1, s(BIG)),
        ("/data/small.bin", 1, 0),
        ("/app/lib/b.txt", 1, 0),
        ("/app/lib/a.txt", 1, s(NEW_A)),
        ("/app/lib/c.txt", 1, s(NEW_C)),
    ]);
    assert_eq!(v["efficiency"].as_f64().unwrap(), score, "{v:#}");
    assert_eq!(v["wasted_bytes"], wasted);
    assert_eq!(
        v["inefficient_files"].as_array().unwrap().len(),
        ineff.len(),
        "{v:#}"
    );
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let ch = changes(&layers[1]);
    for want in [
        format!("C /data/big.bin {BIG}"),
        format!("D /data/small.bin {SMALL}"),
        format!("C /app/lib/a.txt {NEW_A}"),
        format!("D /app/lib/b.txt {LIB_B}"),
        format!("A /app/lib/c.txt {NEW_C}"),
    ] {
        assert!(ch.contains(&want), "{want} not in {ch:?}");
    }
    // The base layer is layerctl's own, read back from buildah's archive unchanged.
    let store = env.json(&["explore", "--json", "demo:1"]);
    assert_eq!(layers[0]["diff_id"], store["layers"][0]["diff_id"]);
}
