//! Real container runtimes on a layerfs mount, as an unprivileged user: crun (spec from
//! `crun spec --rootless`) and bubblewrap containers write, delete, rename and chown
//! files in a busybox root file system built here; the upper layer must then hold exactly
//! the expected changes. Then `layerctl run` end to end with the store under
//! ~/.local/share/layerfs.
//!
//! This machine's cgroups are in hybrid mode, which crun refuses even with cgroups
//! disabled; crun therefore runs in a private cgroup namespace with a fresh cgroup2 on
//! /sys/fs/cgroup (see `CRUN_NS`), and its spec has no cgroup settings.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use common::rootless::*;
use common::{assert_success, lgetxattr_str, lstat, read_str, type_tree};

/// What every container does (busybox sh). `$CHOWN` is an extra chown command line.
const CONTAINER_SCRIPT: &str = r##"set -e
echo new > /new
echo more >> /etc/motd
rm /bin/vi
mv /etc/group /etc/group2
mkdir /data
echo d > /data/f
chown 0:0 /data/f
rm -r /opt/lowerdir
mkdir /opt/lowerdir
touch /opt/lowerdir/n
mv /home/app /home/app2
test "$(cat /home/app2/.profile)" = "# app"
test ! -e /etc/group
eval "$CHOWN"
echo container-done"##;

/// The upper layer after CONTAINER_SCRIPT (char 0:0 whiteouts: Linux lets anyone make
/// them), plus `extra` entries.
fn expected_upper(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "d bin",
        "c0:0 bin/vi",
        "d data",
        "f data/f",
        "d etc",
        "c0:0 etc/group",
        "f etc/group2",
        "f etc/motd",
        "d home",
        "c0:0 home/app",
        "d home/app2",
        "f new",
        "d opt",
        "d opt/lowerdir",
        "f opt/lowerdir/n",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(extra.iter().map(|s| s.to_string()))
    .collect();
    v.sort();
    v
}

fn check_upper(dir: &UserDir, extra: &[&str]) {
    let upper = dir.p("upper");
    assert_eq!(
        type_tree(&upper),
        expected_upper(extra),
        "upper layer contents"
    );
    let x = |rel: &str, name: &str| lgetxattr_str(upper.join(rel), name);
    assert_eq!(
        x("opt/lowerdir", "user.overlay.opaque").as_deref(),
        Some("y")
    );
    // Renamed within its directory: the old name, relative, as kernel overlayfs writes.
    assert_eq!(
        x("home/app2", "user.overlay.redirect").as_deref(),
        Some("app")
    );
    assert_eq!(read_str(upper.join("etc/motd")), "base\nmore\n");
    assert_eq!(read_str(upper.join("new")), "new\n");
    // The lower layer is untouched.
    assert!(dir.p("l0/bin/vi").exists());
    assert!(dir.p("l0/home/app/.profile").exists());
    assert_eq!(read_str(dir.p("l0/etc/motd")), "base\n");
}

/// A temp dir owned by the user with l0 = the busybox rootfs, upper, work, mnt, bundle.
fn setup(user: &TestUser) -> UserDir {
    let dir = UserDir::new(user);
    busybox_rootfs(&dir.p("l0"));
    for d in ["upper", "work", "mnt", "bundle", "state"] {
        fs::create_dir(dir.p(d)).unwrap();
    }
    chown_tree(dir.path(), user.uid, user.gid);
    dir
}

/// Writes bundle/config.json from `crun spec --rootless` (run as the user), edited: the
/// mount as root fs (writable), no terminal, our script, no cgroup resources. With
/// `own_userns` false the container shares the caller's user namespace (podman's rootless
/// layout: crun runs as root of a namespace that already maps the subordinate ids).
fn crun_spec(user: &TestUser, dir: &UserDir, chown: &str, own_userns: bool) {
    user_ok(
        user,
        &format!("cd {} && crun spec --rootless", dir.p("bundle").display()),
        &[],
    );
    let path = dir.p("bundle/config.json");
    let mut spec: serde_json::Value = serde_json::from_str(&read_str(&path)).unwrap();
    spec["root"] = serde_json::json!({"path": dir.p("mnt"), "readonly": false});
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", CONTAINER_SCRIPT]);
    spec["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(format!("CHOWN={chown}").into());
    // crun's rootless default keeps only KILL, NET_BIND_SERVICE and AUDIT_WRITE; the
    // container's root needs CHOWN and friends to change owners (as under podman).
    let caps = serde_json::json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_AUDIT_WRITE"
    ]);
    for set in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][set] = caps.clone();
    }
    let linux = spec["linux"].as_object_mut().unwrap();
    linux.remove("resources");
    if !own_userns {
        let ns = linux.get_mut("namespaces").unwrap().as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "user");
    }
    fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    chown_tree(&dir.p("bundle"), user.uid, user.gid);
}

/// Shell: enter a private cgroup namespace + cgroup2 mount (crun refuses hybrid hosts),
/// then run crun on the bundle. Needs $D.
const CRUN_RUN: &str = r#"mount -t cgroup2 cgroup2 /sys/fs/cgroup
crun --root "$D/state" --cgroup-manager=disabled run --bundle "$D/bundle" c1 > "$D/out.txt" 2>&1 || { cat "$D/out.txt" >&2; exit 1; }
grep -q container-done "$D/out.txt"
"#;

/// crun in a podman-like user namespace (root = the user, 1..65536 = subordinate ids),
/// layerfs mounted directly in it; the container's chown to 1000 and 5 land on the
/// subordinate ids.
#[test]
fn crun_on_userns_mount_with_subordinate_ids() {
    require_tool("crun", "crun");
    let user = fuse_user();
    let dir = setup(&user);
    crun_spec(
        &user,
        &dir,
        "chown 1000:1000 /new && chown 5:6 /etc/group2",
        false,
    );
    let script = format!(
        r#"D={d}
layerfs -o lowerdir=$D/l0,upperdir=$D/upper,workdir=$D/work $D/mnt
trap 'umount $D/mnt' EXIT
{CRUN_RUN}"#,
        d = dir.path().display()
    );
    let ns_args = format!("{} -C", subid_userns_args(&user));
    user_ok(&user, &in_userns(&ns_args, &script), &[]);
    check_upper(&dir, &[]);
    let (su, sg) = (user.subuid.0, user.subgid.0);
    let m = lstat(dir.p("upper/new"));
    assert_eq!((m.uid(), m.gid()), (su + 999, sg + 999));
    let m = lstat(dir.p("upper/etc/group2"));
    assert_eq!((m.uid(), m.gid()), (su + 4, sg + 5));
    assert_eq!(lstat(dir.p("upper/data/f")).uid(), user.uid);
}

/// crun (rootless: the user is root inside) on a mount the user made through the setuid
/// fusermount3, outside any user namespace.
#[test]
fn crun_on_fusermount3_mount() {
    require_tool("crun", "crun");
    require_tool("fusermount3", "fuse3");
    let user = fuse_user();
    let dir = setup(&user);
    crun_spec(&user, &dir, "chown 0:0 /new", true);
    let script = format!(
        r#"D={d}
layerfs -o lowerdir=$D/l0,upperdir=$D/upper,workdir=$D/work $D/mnt
trap 'fusermount3 -u $D/mnt' EXIT
unshare -UrmC sh -euc '{crun}'
"#,
        d = dir.path().display(),
        crun = CRUN_RUN.replace('\'', r"'\''"),
    );
    user_ok(&user, &script, &[("D", &dir.path().display().to_string())]);
    check_upper(&dir, &[]);
    assert_eq!(lstat(dir.p("upper/new")).uid(), user.uid);
}

/// bubblewrap, unprivileged, on a fusermount3 mount and on a user-namespace mount.
#[test]
fn bwrap_on_layerfs_mounts() {
    require_tool("bwrap", "bubblewrap");
    let user = fuse_user();
    for userns_mount in [false, true] {
        let dir = setup(&user);
        let bwrap = format!(
            r#"CHOWN="chown 0:0 /new" bwrap --unshare-user --unshare-pid --uid 0 --gid 0 --cap-add ALL \
  --bind $D/mnt / --proc /proc --dev /dev --chdir / -- /bin/sh -c '{}' > $D/out.txt 2>&1 || {{ cat $D/out.txt >&2; exit 1; }}
grep -q container-done $D/out.txt"#,
            CONTAINER_SCRIPT.replace('\'', r"'\''")
        );
        let (unmount, wrap): (&str, bool) = if userns_mount {
            ("umount", true)
        } else {
            ("fusermount3 -u", false)
        };
        let script = format!(
            r#"D={d}
layerfs -o lowerdir=$D/l0,upperdir=$D/upper,workdir=$D/work $D/mnt
trap '{unmount} $D/mnt' EXIT
{bwrap}
"#,
            d = dir.path().display()
        );
        let script = if wrap {
            in_userns("-Urm", &script)
        } else {
            script
        };
        user_ok(&user, &script, &[]);
        check_upper(&dir, &[]);
    }
}

/// layerctl run by root (this process) on the store at `store`.
fn layerctl_as_root(store: &Path, args: &[&str]) -> Output {
    Command::new(bin_dir().join("layerctl"))
        .arg("--root")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

/// `layerctl run` as an ordinary user with the default store (~/.local/share/layerfs):
/// with crun and with bubblewrap, exit status, --commit with created_by, diff, the image's
/// User/WorkingDir/Env, and the committed image's content.
#[test]
fn layerctl_run_as_user() {
    let user = fuse_user();
    let bins = bin_dir();
    assert!(
        bins.join("layerctl").exists(),
        "layerctl is not built next to layerfs: run `cargo build --workspace` (or `cargo test --workspace`)"
    );
    let dir = setup(&user);
    let home_store = user.home.join(".local/share/layerfs");
    let _ = fs::remove_dir_all(&home_store);
    let script = format!(
        r#"{SH_PRELUDE}
D={d}
layerctl import $D/l0 bb:1 >/dev/null
test -d "$HOME/.local/share/layerfs/layers"
layerctl layers --json | grep -o '"sha256:[0-9a-f]*"' > $D/user-layers.txt
layerctl run --help | grep -q "crun when installed, else bubblewrap"
for rt in crun bwrap; do
    set +e
    layerctl run --runtime $rt --name c-$rt --commit bb:$rt --commit-on-failure bb:1 -- sh -c 'echo new > /new; rm /bin/vi; mv /etc/group /etc/group2; exit 7'
    rc=$?
    set -e
    test $rc = 7
    layerctl diff c-$rt > $D/diff-$rt.txt
    layerctl history --no-trunc bb:$rt > $D/history-$rt.txt
    test "$(layerctl run --rm --runtime $rt bb:$rt -- cat /new)" = new
    layerctl run --rm --runtime $rt bb:$rt -- test ! -e /bin/vi
done
# the image's runtime config reaches the process
layerctl mount bb:1 $D/mnt --name cfg >/dev/null
layerctl umount cfg >/dev/null
layerctl commit cfg bb:cfg --change 'USER app' --change 'WORKDIR /home/app' --change 'ENV GREETING=hi' >/dev/null
for rt in crun bwrap; do
    test "$(layerctl run --rm --runtime $rt bb:cfg -- sh -c 'echo $(id -u):$(id -g):$(pwd):$GREETING')" = "1000:1000:/home/app:hi"
done
# the original image is unchanged
layerctl run --rm bb:1 -- test -e /bin/vi
fails "no such image" layerctl run bb:nope -- true
# the rest of the workflow as the user
layerctl mount bb:crun $D/mnt --name ro --read-only >/dev/null
test "$(cat $D/mnt/new)" = new
fails "Read-only file system" touch $D/mnt/x
layerctl ps -s | grep -q "^ro "
layerctl umount ro >/dev/null
layerctl inspect bb:crun | grep -q created_by
layerctl fsck >/dev/null
layerctl rm c-crun >/dev/null
layerctl rm c-bwrap >/dev/null
layerctl rm ro >/dev/null
layerctl rm cfg >/dev/null
layerctl rmi bb:bwrap >/dev/null
layerctl rmi bb:cfg >/dev/null
layerctl gc >/dev/null
layerctl fsck | grep -q "store is clean"
test "$(layerctl images --json | grep -c '"name"')" = 2
"#,
        d = dir.path().display()
    );
    user_ok(&user, &script, &[]);
    // The same tree owned by root, imported by root: the user's files are recorded as
    // root's in layer tars, so the diff_id is the same.
    let copy = dir.p("rootcopy");
    let st = Command::new("cp")
        .arg("-a")
        .arg(dir.p("l0"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    chown_tree(&copy, 0, 0);
    let root_store = dir.p("rootstore");
    let out = layerctl_as_root(&root_store, &["import", copy.to_str().unwrap(), "bb:1"]);
    assert_success(&out);
    let out = layerctl_as_root(&root_store, &["layers", "--json"]);
    let root_layer = String::from_utf8_lossy(&out.stdout).to_string();
    let user_layers = read_str(dir.p("user-layers.txt"));
    let first = user_layers.lines().next().unwrap_or("<none>").to_string();
    assert!(
        user_layers.lines().count() >= 1 && root_layer.contains(first.trim_matches('"')),
        "rootless and root imports of the same tree give different diff_ids: user {user_layers} root {root_layer}"
    );
    for rt in ["crun", "bwrap"] {
        let diff = read_str(dir.p(&format!("diff-{rt}.txt")));
        assert_eq!(
            diff, "C /bin\nD /bin/vi\nC /etc\nD /etc/group\nA /etc/group2\nA /new\n",
            "layerctl diff after the {rt} run"
        );
        let history = read_str(dir.p(&format!("history-{rt}.txt")));
        assert!(
            history
                .contains("sh -c 'echo new > /new; rm /bin/vi; mv /etc/group /etc/group2; exit 7'"),
            "created_by is the command line:\n{history}"
        );
    }
    let _ = fs::remove_dir_all(&home_store);
}

/// `layerctl run` as root: no user namespace is needed, so a chown to any id works, and
/// the exit status is still the command's.
#[test]
fn layerctl_run_as_root() {
    let user = test_user();
    let dir = setup(&user);
    chown_tree(&dir.p("l0"), 0, 0);
    let ctl = |args: &[&str]| layerctl_as_root(&dir.p("store"), args);
    let l0 = dir.p("l0").display().to_string();
    let out = ctl(&["import", &l0, "bb:1"]);
    assert_success(&out);
    for rt in ["crun", "bwrap"] {
        let name = format!("root-{rt}");
        let out = ctl(&[
            "run",
            "--runtime",
            rt,
            "--name",
            &name,
            "bb:1",
            "--",
            "sh",
            "-c",
            "echo x > /f && chown 5:6 /f && exit 3",
        ]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{rt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let upper = dir.p(&format!("store/containers/{name}/upper/f"));
        let m = lstat(&upper);
        assert_eq!(
            (m.uid(), m.gid()),
            (5, 6),
            "{rt}: owner of {}",
            upper.display()
        );
    }
}
