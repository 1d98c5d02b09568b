//! Interrupted commands leave nothing behind: SIGINT/SIGTERM during `save` and `load`
//! remove their temp files and directories before the process ends; what a SIGKILL leaves
//! is reported by `fsck` (exit 1), counted by `gc`, and removed by the next command.
//! Also `rmi` of an id that has several names.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// An image whose one layer is a 48 MiB file of random bytes: long enough to gzip and
/// hash that a signal lands in the middle.
fn big_image(env: &Env) {
    let root = env.path("big");
    fs::create_dir_all(root.join("data")).unwrap();
    let st = Command::new("head")
        .args(["-c", "50331648", "/dev/urandom"])
        .stdout(fs::File::create(root.join("data/blob")).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    env.ok(&["import", root.to_str().unwrap(), "big:1"]);
}

fn spawn(env: &Env, args: &[&str]) -> Child {
    env.cmd(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until `cond` holds (the command has started writing), then a little longer.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(150));
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Names in `dir` starting with `prefix`.
fn entries(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn tmp_entries(env: &Env) -> Vec<String> {
    entries(&env.root.join("tmp"), "")
}

#[test]
fn sigint_and_sigterm_remove_temp_files() {
    let env = Env::new();
    big_image(&env);
    let out = env.dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let target = out.join("img.tar");
    for (sig, num) in [("-INT", libc::SIGINT), ("-TERM", libc::SIGTERM)] {
        let mut c = spawn(
            &env,
            &[
                "save",
                "big:1",
                "--format",
                "oci-archive",
                "-o",
                target.to_str().unwrap(),
            ],
        );
        wait_for("save's staging directory", || {
            !entries(&out, ".img.tar").is_empty()
        });
        signal(&c, sig);
        let st = c.wait().unwrap();
        assert_eq!(
            st.signal(),
            Some(num),
            "save {sig}: ended by the signal ({st})"
        );
        assert_eq!(
            entries(&out, ""),
            Vec::<String>::new(),
            "save {sig} left files"
        );
        assert_eq!(
            tmp_entries(&env),
            Vec::<String>::new(),
            "save {sig}: store tmp/"
        );
    }
    env.fsck_clean();

    // load: the archive's unpacked copy and the half-extracted layer go too.
    let archive = env.path("big.tar");
    env.ok(&["save", "big:1", "-o", archive.to_str().unwrap()]);
    let e2 = Env::new();
    e2.ok(&["images"]);
    for (sig, num) in [("-INT", libc::SIGINT), ("-TERM", libc::SIGTERM)] {
        let mut c = spawn(&e2, &["load", archive.to_str().unwrap()]);
        wait_for("load's temp directory", || !tmp_entries(&e2).is_empty());
        signal(&c, sig);
        let st = c.wait().unwrap();
        assert_eq!(
            st.signal(),
            Some(num),
            "load {sig}: ended by the signal ({st})"
        );
        assert_eq!(
            tmp_entries(&e2),
            Vec::<String>::new(),
            "load {sig}: store tmp/"
        );
    }
    e2.fsck_clean();
    assert_eq!(e2.json(&["images", "--json"]), serde_json::json!([]));
}

#[test]
fn sigkill_leftovers_are_reported_counted_and_removed() {
    let env = Env::new();
    big_image(&env);
    let archive = env.path("big.tar");
    env.ok(&["save", "big:1", "-o", archive.to_str().unwrap()]);
    let e2 = Env::new();
    e2.ok(&["images"]);
    let killed_load = || {
        let mut c = spawn(&e2, &["load", archive.to_str().unwrap()]);
        wait_for("load's temp directory", || {
            tmp_entries(&e2).iter().any(|t| {
                fs::read_dir(e2.root.join("tmp").join(t)).is_ok_and(|mut d| d.next().is_some())
            })
        });
        signal(&c, "-KILL");
        c.wait().unwrap();
        assert!(
            !tmp_entries(&e2).is_empty(),
            "SIGKILL cannot be cleaned up after"
        );
    };
    // fsck says so, with a non-zero status, and removes them; then it is clean.
    killed_load();
    let o = e2.run(&["fsck"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("leftover of an interrupted command: tmp/"),
        "{err}"
    );
    e2.fsck_clean();
    assert!(tmp_entries(&e2).is_empty());
    // gc counts what it frees there.
    killed_load();
    let out = e2.ok(&["gc"]);
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("freed ")
            && !last.starts_with("freed 0B")
            && last.contains("1 leftover(s)"),
        "{out}"
    );
    assert!(tmp_entries(&e2).is_empty());
    e2.fsck_clean();

    // A killed save leaves its hidden staging file; the next save to that name removes it.
    let out_dir = env.dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("img.tar");
    let mut c = spawn(
        &env,
        &[
            "save",
            "big:1",
            "--format",
            "oci-archive",
            "-o",
            target.to_str().unwrap(),
        ],
    );
    wait_for("save's staging directory", || {
        !entries(&out_dir, ".img.tar").is_empty()
    });
    signal(&c, "-KILL");
    c.wait().unwrap();
    assert!(!entries(&out_dir, ".img.tar").is_empty());
    env.ok(&[
        "save",
        "big:1",
        "--format",
        "oci-archive",
        "-o",
        target.to_str().unwrap(),
    ]);
    assert_eq!(entries(&out_dir, ""), ["img.tar"]);
}

/// `rmi` of an image id with several names refuses without -f and lists them; by name
/// it removes that name only.
#[test]
fn rmi_of_an_id_with_several_tags() {
    let env = Env::new();
    env.import_rootfs("a:1");
    let x = env.path("a.tar");
    env.ok(&["save", "a:1", "-o", x.to_str().unwrap()]);
    let id = env.ok(&["load", x.to_str().unwrap(), "b:2"]);
    let id = id.split_whitespace().nth(1).unwrap().to_string();
    let before = store_state(&env.root);
    env.fails(&["rmi", &id], "has 2 tags (a:1, b:2)");
    env.fails(&["rmi", &id[7..19]], "remove one by name");
    assert_eq!(
        store_state(&env.root),
        before,
        "a refused rmi changed the store"
    );
    assert_eq!(env.ok(&["rmi", "b:2"]), "Untagged: b:2");
    env.ok(&["load", x.to_str().unwrap(), "b:2"]);
    let out = env.ok(&["rmi", "-f", &id]);
    assert_eq!(out, format!("Untagged: a:1\nUntagged: b:2\nDeleted: {id}"));
    env.fsck_clean();
}

/// With stderr on a terminal (`script` gives one), saving one big layer shows its bytes,
/// rate and time left, not a layer count that sits at 0/1 while it is compressed.
#[test]
fn progress_of_one_big_layer_shows_bytes_rate_and_eta() {
    let env = Env::new();
    big_image(&env);
    let out = env.path("big.tar");
    let typescript = env.path("typescript");
    let line = format!(
        "{} --root {} save big:1 --format oci-archive -o {}",
        layerctl_bin().display(),
        env.root.display(),
        out.display()
    );
    let st = Command::new("script")
        .args(["-qec", &line])
        .arg(&typescript)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("script (apt-get install bsdutils)");
    assert!(st.success());
    let text = String::from_utf8_lossy(&fs::read(&typescript).unwrap()).replace('\r', "\n");
    let bar = text
        .lines()
        .find(|l| l.contains("saving layer 1/1") && l.contains("/48.00 MiB"))
        .unwrap_or_else(|| panic!("no byte bar for the layer in:\n{text}"));
    assert!(bar.contains("/s") && bar.contains("ETA"), "{bar}");
    assert!(text.contains("writing archive"), "{text}");
}

/// `load` from a slow pipe reads the whole stream before it takes the store lock, so other
/// commands are not held up meanwhile (`save | ssh host layerctl load`); a SIGINT while it
/// reads leaves no copy behind.
#[test]
fn load_from_a_slow_pipe_does_not_hold_the_store_lock() {
    use std::io::Write;
    let env = Env::new();
    let rootfs = env.import_rootfs("a:1");
    let archive = env.path("a.tar");
    env.ok(&["save", "a:1", "-o", archive.to_str().unwrap()]);
    let bytes = fs::read(&archive).unwrap();
    let e2 = Env::new();
    e2.ok(&["images"]);
    let mut c = e2
        .cmd(&["load"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    stdin.write_all(&bytes[..bytes.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A writer gets the lock while the load is still reading its pipe.
    let mut other = e2
        .cmd(&["import", rootfs.to_str().unwrap(), "other:1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let st = loop {
        if let Some(st) = other.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "import waited for the lock while load read stdin"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success());
    stdin.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(stdin);
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("a:1 sha256:"));
    assert!(entries(&e2.root, ".load-stdin-").is_empty());
    e2.fsck_clean();

    // Interrupted while reading: the copy goes.
    let e3 = Env::new();
    e3.ok(&["images"]);
    let mut c = e3
        .cmd(&["load"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    stdin.write_all(&bytes[..bytes.len() / 2]).unwrap();
    wait_for("load's copy of stdin", || {
        !entries(&e3.root, ".load-stdin-").is_empty()
    });
    signal(&c, "-INT");
    let st = c.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGINT));
    assert!(
        entries(&e3.root, ".load-stdin-").is_empty(),
        "the copy of stdin is left"
    );
    e3.fsck_clean();
}
