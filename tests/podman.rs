//! Rootless podman with layerfs as its overlay `mount_program`: import, run, diff, commit,
//! run the committed image, and the original image stays unchanged. A wrapper mount
//! program logs every command line podman passes, so the test also checks that podman's
//! probes and option quirks reached layerfs and worked: `--version`, the empty option
//! (`...,workdir=W,,volatile`, `volatile` for `--rm`) and read-only mounts without upperdir
//! (`podman image mount`).
//!
//! Machine notes: podman 4.3 wants a short XDG_RUNTIME_DIR, and its default runtime crun
//! refuses this machine's hybrid cgroups, so containers.conf selects runc with the
//! cgroupfs manager; networking is off (`netns = "none"`), nothing needs it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::read_str;
use common::rootless::*;

/// Ends the rootless pause process (`catatonit -P`) that podman started for the test's
/// XDG_RUNTIME_DIR: it holds podman's user namespace and would outlive the test. Only that
/// one process: the pid podman recorded under this runtime dir, and only while it still
/// belongs to the test user and was started with this runtime dir (never the pause
/// process of another podman user or another test run).
struct PodmanPauseGuard {
    xdg_runtime_dir: PathBuf,
    uid: u32,
}

impl PodmanPauseGuard {
    fn pid(&self) -> Option<i32> {
        let pid_file = self.xdg_runtime_dir.join("libpod/tmp/pause.pid");
        let pid: i32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let status = fs::read_to_string(proc_dir.join("status")).ok()?;
        let real_uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let environ = fs::read(proc_dir.join("environ")).ok()?;
        let want = format!("XDG_RUNTIME_DIR={}", self.xdg_runtime_dir.display());
        let ours = environ.split(|b| *b == 0).any(|v| v == want.as_bytes());
        (pid > 1 && real_uid == self.uid && ours).then_some(pid)
    }
}

impl Drop for PodmanPauseGuard {
    fn drop(&mut self) {
        let Some(pid) = self.pid() else { return };
        // SAFETY: kill has no memory-safety preconditions; pid is checked above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // Wait (bounded) until it is gone or a zombie waiting for init.
        for _ in 0..500 {
            let alive = fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false);
            if !alive {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!("podman's pause process {pid} survived SIGKILL");
    }
}

/// The busybox root file system as a tar (entries owned by 0:0), for `podman import`.
fn busybox_tar(dir: &Path, tar: &Path) {
    let root = dir.join("rootfs");
    busybox_rootfs(&root);
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar of the busybox rootfs");
}

#[test]
fn podman_with_layerfs_mount_program() {
    require_tool("podman", "podman");
    require_tool("runc", "runc");
    let user = fuse_user();
    let dir = UserDir::new(&user);
    let d = dir.path().display().to_string();
    busybox_tar(dir.path(), &dir.p("bb.tar"));
    // The wrapper logs podman's command lines, then is layerfs.
    let wrapper = dir.p("mount-program");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {d}/mount-program.log\nexec {} \"$@\"\n",
            bin_dir().join("layerfs").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        dir.p("storage.conf"),
        format!(
            "[storage]\ndriver = \"overlay\"\nrunroot = \"{d}/run\"\ngraphroot = \"{d}/graph\"\n\
             [storage.options.overlay]\nmount_program = \"{}\"\n",
            wrapper.display()
        ),
    )
    .unwrap();
    fs::write(
        dir.p("containers.conf"),
        "[containers]\nnetns = \"none\"\n[engine]\nruntime = \"runc\"\n\
         cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    fs::create_dir(dir.p("xdg")).unwrap();
    // A fresh HOME: nothing from the user's own podman set-up (configs, the libpod
    // database that pins storage paths) may take part.
    fs::create_dir(dir.p("home")).unwrap();
    fs::set_permissions(dir.p("xdg"), fs::Permissions::from_mode(0o700)).unwrap();
    chown_tree(dir.path(), user.uid, user.gid);
    // Declared after `dir`, so dropped before it: the pid file is inside.
    let _pause = PodmanPauseGuard {
        xdg_runtime_dir: dir.p("xdg"),
        uid: user.uid,
    };

    let script = format!(
        r##"{SH_PRELUDE}
D={d}
podman import $D/bb.tar localhost/bb:1 >/dev/null 2>&1
# podman info runs `MOUNT_PROGRAM --version` and reports what it says
podman info > $D/info.txt
podman run --name c1 localhost/bb:1 sh -c '
    set -e
    echo new > /new
    echo more >> /etc/motd
    rm /bin/vi
    mv /etc/group /etc/group2
    rm -r /opt/lowerdir && mkdir /opt/lowerdir && touch /opt/lowerdir/n
    mv /home/app /home/app2
    chown 1000:1000 /new
    grep -q " / .* fuse.layerfs " /proc/self/mountinfo'
podman diff c1 | sort > $D/diff.txt
podman commit c1 localhost/bb:2 >/dev/null 2>&1
# the committed image has the changes
podman run --rm localhost/bb:2 sh -c '
    set -e
    test "$(cat /new)" = new
    test "$(stat -c %u /new)" = 1000
    test "$(cat /etc/motd)" = "base
more"
    test ! -e /bin/vi
    test ! -e /etc/group
    test -f /etc/group2
    test "$(ls /opt/lowerdir)" = n
    test "$(cat /home/app2/.profile)" = "# app"
    test ! -e /home/app'
# the original image is unchanged
podman run --rm localhost/bb:1 sh -c '
    set -e
    test ! -e /new
    test -e /bin/vi
    test "$(cat /etc/motd)" = base
    test -f /opt/lowerdir/old
    test -d /home/app'
# a read-only mount of an image (no upperdir)
podman unshare sh -euc '
    m=$(podman image mount localhost/bb:1)
    test "$(cat $m/etc/motd)" = base
    grep " $m " /proc/self/mountinfo | grep -q "fuse.layerfs"
    if touch $m/x 2>/dev/null; then echo "read-only image mount is writable" >&2; exit 1; fi
    podman image unmount localhost/bb:1 >/dev/null'
podman rm c1 >/dev/null
"##
    );
    let env = [
        ("HOME", format!("{d}/home")),
        ("XDG_RUNTIME_DIR", format!("{d}/xdg")),
        ("CONTAINERS_STORAGE_CONF", format!("{d}/storage.conf")),
        ("CONTAINERS_CONF", format!("{d}/containers.conf")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let result = run_as_user(&user, &script, &env);
    // podman's storage (owned by subordinate ids) goes with the temp dir, removed as root.
    let log = fs::read_to_string(dir.p("mount-program.log")).unwrap_or_default();
    assert!(
        result.status.success(),
        "podman scenario failed ({}):\n--- stdout\n{}--- stderr\n{}--- mount program log\n{log}",
        result.status,
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    let diff = read_str(dir.p("diff.txt"));
    for line in [
        "A /new",
        "C /etc/motd",
        "D /bin/vi",
        "D /etc/group",
        "A /etc/group2",
        "A /opt/lowerdir/n",
        "D /home/app",
        "A /home/app2",
    ] {
        assert!(
            diff.lines().any(|l| l == line),
            "podman diff lacks {line:?}:\n{diff}"
        );
    }
    // What podman asked of the mount program.
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.contains(&"--version"),
        "podman did not probe --version:\n{log}"
    );
    let info = read_str(dir.p("info.txt"));
    assert!(
        info.contains("layerfs"),
        "podman info does not show the mount program's version:\n{info}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(",upperdir=") && l.contains(",,volatile")),
        "no writable mount with the empty option and volatile (podman run --rm):\n{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("-o lowerdir=") && !l.contains("upperdir=")),
        "no read-only mount without upperdir:\n{log}"
    );
}

/// One podman set-up of the test user under `dir` whose overlay mount program is
/// `program` (through a wrapper that logs its command lines to `NAME-mount-program.log`):
/// its own storage, runtime dir and HOME. Returns the environment to run podman with.
fn podman_setup(
    dir: &UserDir,
    user: &TestUser,
    program: &Path,
    name: &str,
) -> Vec<(String, String)> {
    let d = dir.path().display().to_string();
    let wrapper = dir.p(&format!("{name}-mount-program"));
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {d}/{name}-mount-program.log\nexec {} \"$@\"\n",
            program.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        dir.p(&format!("{name}-storage.conf")),
        format!(
            "[storage]\ndriver = \"overlay\"\nrunroot = \"{d}/{name}-run\"\n\
             graphroot = \"{d}/{name}-graph\"\n\
             [storage.options.overlay]\nmount_program = \"{}\"\n",
            wrapper.display()
        ),
    )
    .unwrap();
    fs::write(
        dir.p("containers.conf"),
        "[containers]\nnetns = \"none\"\n[engine]\nruntime = \"runc\"\n\
         cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    for sub in ["xdg", "home"] {
        let p = dir.p(&format!("{name}-{sub}"));
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    }
    chown_tree(dir.path(), user.uid, user.gid);
    vec![
        ("HOME".into(), format!("{d}/{name}-home")),
        ("XDG_RUNTIME_DIR".into(), format!("{d}/{name}-xdg")),
        (
            "CONTAINERS_STORAGE_CONF".into(),
            format!("{d}/{name}-storage.conf"),
        ),
        ("CONTAINERS_CONF".into(), format!("{d}/containers.conf")),
    ]
}

/// `podman run --uidmap 0:1:1000 --gidmap 0:1:1000` on layerfs and on fuse-overlayfs:
/// containers-storage then passes `uidmapping=`/`gidmapping=` (ContainerID:HostID:Size) to
/// its mount program, which must show the image's files owned by the container's root
/// and map the ids of files created and chowned in the container back. The container
/// sees the same owners on both, and the owners podman expects; the upper layers hold
/// the same on-disk owners. (Before: layerfs refused podman's `uidmapping=:0:1:1000`,
/// whose leading colon fuse-overlayfs skips, and mapped the other way.)
#[test]
fn podman_uidmap_owners_match_fuse_overlayfs() {
    require_tool("podman", "podman");
    require_tool("runc", "runc");
    require_tool("fuse-overlayfs", "fuse-overlayfs");
    let user = fuse_user();
    let dir = UserDir::new(&user);
    let d = dir.path().display().to_string();
    busybox_tar(dir.path(), &dir.p("bb.tar"));
    let mut outputs = Vec::new();
    for (name, program) in [
        ("layerfs", bin_dir().join("layerfs")),
        ("fuse-overlayfs", PathBuf::from("/usr/bin/fuse-overlayfs")),
    ] {
        let env = podman_setup(&dir, &user, &program, name);
        let _pause = PodmanPauseGuard {
            xdg_runtime_dir: dir.p(&format!("{name}-xdg")),
            uid: user.uid,
        };
        let script = format!(
            r##"D={d}
podman import $D/bb.tar localhost/bb:1 >/dev/null 2>&1
podman run --name c1 --uidmap 0:1:1000 --gidmap 0:1:1000 localhost/bb:1 sh -c '
    set -e
    echo new > /new
    mkdir /d && chown 5:6 /d
    echo more >> /etc/motd
    chown 7:8 /etc/motd
    stat -c "%n %u:%g %a" / /bin /bin/sh /etc /etc/motd /new /d /home/app /tmp'
podman unshare sh -euc '
    m=$(podman mount c1)
    cd $m/../diff
    stat -c "upper %n %u:%g" new d etc/motd'
podman rm c1 >/dev/null
"##
        );
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let result = run_as_user(&user, &script, &env);
        let log =
            fs::read_to_string(dir.p(&format!("{name}-mount-program.log"))).unwrap_or_default();
        assert!(
            result.status.success(),
            "{name}: podman --uidmap failed ({}):\n--- stdout\n{}--- stderr\n{}--- mount program log\n{log}",
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        assert!(
            log.contains("uidmapping=:0:1:1000") && log.contains("gidmapping=:0:1:1000"),
            "{name}: podman passed no id mapping to the mount program:\n{log}"
        );
        outputs.push(String::from_utf8_lossy(&result.stdout).into_owned());
    }
    assert_eq!(outputs[0], outputs[1], "layerfs and fuse-overlayfs differ");
    let out = &outputs[0];
    for line in [
        "/ 0:0 ",
        "/bin/sh 0:0 ",
        "/etc/motd 7:8 ",
        "/new 0:0 ",
        "/d 5:6 ",
        "/home/app 0:0 ",
        // On disk, as podman's user namespace sees its storage: container id N is N.
        "upper new 0:0",
        "upper d 5:6",
        "upper etc/motd 7:8",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "the container does not see {line:?}:\n{out}"
        );
    }
}
