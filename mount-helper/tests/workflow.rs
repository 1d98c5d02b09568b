//! The whole workflow through a real mount: import, mount, change files through the mount,
//! diff, commit, remount the committed image, dedup, gc, fsck, and the faults a mount can
//! have. The mount program is chosen in `common::mount_program` (the real layerfs daemon).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

/// The change every test applies, through a mount or to a plain directory. Times of
/// everything touched are pinned so that the same change always gives the same layer.
const CHANGE: &str = "
printf 'new\\n' > etc/new
printf 'more\\n' >> etc/passwd
rm usr/share/doc/a.txt
rm -r var/lib/app
mkdir var/lib/app
printf 'fresh\\n' > var/lib/app/fresh
mv opt/tool opt/tool2
ln etc/new etc/new.hard
ln etc/passwd etc/passwd.hard
for p in etc/new etc/passwd var/lib/app/fresh var/lib/app opt/tool2 usr/share/doc usr/share usr var/lib var opt etc; do
  touch -h -d @1000000000 $p
done
";

fn expected_changes() -> BTreeSet<String> {
    [
        "C /etc",
        "A /etc/new",
        "A /etc/new.hard",
        "C /etc/passwd",
        "A /etc/passwd.hard",
        "C /opt",
        "D /opt/tool",
        "A /opt/tool2",
        "A /opt/tool2/bin",
        "A /opt/tool2/bin/run",
        "C /usr",
        "C /usr/share",
        "C /usr/share/doc",
        "D /usr/share/doc/a.txt",
        "C /var",
        "C /var/lib",
        "C /var/lib/app",
        "D /var/lib/app/data",
        "D /var/lib/app/sub",
        "A /var/lib/app/fresh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn layer_names(tar_path: &Path) -> Vec<String> {
    let mut ar = tar::Archive::new(fs::File::open(tar_path).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}

#[test]
fn import_mount_change_commit_remount() {
    let env = Env::new();
    let rootfs = env.import_rootfs("base");

    // The expected result: the same change on a plain copy.
    let expected = env.path("expected");
    sh(
        env.dir.path(),
        &format!("cp -a {} {}", rootfs.display(), expected.display()),
    );
    sh(&expected, CHANGE);

    let m1 = env.path("m1");
    fs::create_dir(&m1).unwrap();
    let _guard = MountGuard(vec![m1.clone(), env.path("m2"), env.path("m3")]);
    let name = env.ok(&["mount", "base", m1.to_str().unwrap(), "--name", "c1"]);
    assert_eq!(name, "c1");
    assert_eq!(
        snapshot(&m1),
        snapshot(&rootfs),
        "fresh mount shows the image"
    );
    sh(&m1, CHANGE);

    // Mounted-state faults.
    env.fails(
        &["mount", "base", m1.to_str().unwrap()],
        "already a mount point",
    );
    env.fails(
        &[
            "mount",
            "base",
            env.path("m2").to_str().unwrap(),
            "--name",
            "c1",
        ],
        "",
    );
    let ps = env.json(&["ps", "-s", "--json"]);
    assert_eq!(ps[0]["state"], "mounted");
    assert!(ps[0]["size_rw"].as_u64().unwrap() > 0);

    let diff: BTreeSet<String> = env
        .ok(&["diff", "c1"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(diff, expected_changes());

    // Commit while mounted.
    let id = env.ok(&[
        "commit",
        "c1",
        "img:2",
        "-m",
        "the change",
        "--created-by",
        "test script",
        "--change",
        "CMD [\"/bin/sh\"]",
        "--change",
        "ENV FOO=bar",
        "--change",
        "WORKDIR /etc",
    ]);
    let cfg = &env.json(&["inspect", &id])["image"]["config"];
    let diff_ids = cfg["rootfs"]["diff_ids"].as_array().unwrap().clone();
    assert_eq!(diff_ids.len(), 2);
    assert_eq!(cfg["config"]["Cmd"][0], "/bin/sh");
    assert_eq!(cfg["config"]["WorkingDir"], "/etc");
    assert!(cfg["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "FOO=bar"));
    assert_eq!(cfg["history"][1]["created_by"], "test script");
    assert_eq!(cfg["history"][1]["comment"], "the change");
    let hist = env.ok(&["history", "img:2"]);
    assert!(
        hist.lines().nth(1).unwrap().contains("test script"),
        "{hist}"
    );

    // diff_id == sha256 of the layer tar, with OCI whiteouts and the renamed dir expanded.
    let new_layer = diff_ids[1].as_str().unwrap().to_string();
    let t = env.path("layer.tar");
    env.ok(&["layer-tar", &new_layer, "-o", t.to_str().unwrap()]);
    assert_eq!(sha256_file(&t), new_layer);
    let names = layer_names(&t);
    for want in [
        "usr/share/doc/.wh.a.txt",
        "opt/.wh.tool",
        "opt/tool2/",
        "opt/tool2/bin/run",
        "var/lib/app/.wh..wh..opq",
        "var/lib/app/fresh",
        "etc/new",
        "etc/new.hard",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.starts_with("var/lib/app/data")),
        "{names:?}"
    );

    // Committing the same upper again gives the same layer, stored once.
    let layers_before = env.json(&["layers", "--json"]).as_array().unwrap().len();
    // Image `id` has the new layer as its second, and the store holds no layer more.
    let reuses_new_layer = |id: &str| {
        assert_eq!(
            env.json(&["inspect", id])["image"]["config"]["rootfs"]["diff_ids"][1],
            new_layer.as_str()
        );
        assert_eq!(
            env.json(&["layers", "--json"]).as_array().unwrap().len(),
            layers_before
        );
    };
    let id2 = env.ok(&["commit", "c1", "img:again"]);
    reuses_new_layer(&id2);

    env.ok(&["umount", "c1"]);
    assert_eq!(env.json(&["ps", "--json"])[0]["state"], "unmounted");

    // An existing container mounts again with its changes; twice is refused.
    env.ok(&["mount", "c1", m1.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(m1.join("etc/new")).unwrap(), "new\n");
    let m4 = env.path("m4");
    fs::create_dir(&m4).unwrap();
    env.fails(&["mount", "c1", m4.to_str().unwrap()], "already mounted");
    env.ok(&["umount", m1.to_str().unwrap()]);

    // The committed image mounts to the expected tree.
    let m2 = env.path("m2");
    fs::create_dir(&m2).unwrap();
    env.ok(&[
        "mount",
        "img:2",
        m2.to_str().unwrap(),
        "--name",
        "check",
        "--read-only",
    ]);
    assert_eq!(snapshot(&m2), snapshot(&expected));
    assert_eq!(link_groups(&m2), link_groups(&expected));
    env.ok(&["umount", m2.to_str().unwrap()]);

    // The same change made again in another container gives the same diff_id.
    let m3 = env.path("m3");
    fs::create_dir(&m3).unwrap();
    env.ok(&["mount", "base", m3.to_str().unwrap(), "--name", "c2"]);
    sh(&m3, CHANGE);
    env.ok(&["umount", "c2"]);
    let id3 = env.ok(&["commit", "c2", "img:3"]);
    reuses_new_layer(&id3);

    // rmi refuses while a container uses the image; gc keeps what is referenced.
    env.fails(&["rmi", "base"], "used by container");
    env.ok(&["rm", "c1"]);
    env.ok(&["rm", "c2"]);
    env.ok(&["rm", "check"]);
    env.ok(&["gc"]);
    assert_eq!(env.json(&["layers", "--json"]).as_array().unwrap().len(), 2);
    env.ok(&["rmi", "img:2"]);
    env.ok(&["rmi", "img:again"]);
    env.ok(&["rmi", "img:3"]);
    let out = env.ok(&["gc"]);
    assert!(out.contains(&format!("deleted layer {new_layer}")), "{out}");
    env.fsck_clean();
}

#[test]
fn stale_mount_and_kill_during_commit() {
    let env = Env::new();
    env.import_rootfs("base");
    let (m, _guard) = env.mount_new("base", "m", "s");
    for i in 0..300 {
        write(&m.join(format!("data/f{i}")), &"y".repeat(i * 40));
    }
    sh(&m, "sync");

    // Kill the daemon: the mount goes stale.
    let pids = daemon_pids(&m);
    assert!(
        !pids.is_empty(),
        "no daemon process found for {}",
        m.display()
    );
    send_sigkill(&pids);
    std::thread::sleep(Duration::from_millis(200));
    let before = store_state(&env.root);
    env.fails(&["commit", "s", "x"], "stale mount");
    env.fails(&["mount", "base", m.to_str().unwrap()], "stale mount");
    assert_eq!(store_state(&env.root), before);
    env.ok(&["umount", "s"]);

    // Kill commit at many moments: the store stays fsck-clean, no half layer referenced.
    for (n, delay) in [1u64, 5, 15, 30, 60, 120].iter().enumerate() {
        env.kill_after(
            &["commit", "s", &format!("k:{n}")],
            Duration::from_millis(*delay),
        );
        env.fsck_passes(&format!("after kill at {delay}ms"));
    }
    env.ok(&["commit", "s", "k:final"]);
    env.fsck_clean();
}
