//! `layerctl run` with real runtimes (crun and bubblewrap) on real layerfs mounts, as root
//! and as an ordinary user: what reaches diff and commit (never the runtime's mount
//! points), when a commit happens (never for a failed command unless asked), and the
//! docker-run command line (Entrypoint/Cmd, -e, --env-file, -v, -w, -u, -i, -t,
//! --network, --read-only, --userns=auto).

mod common;

#[path = "../../tests/common/rootless.rs"]
mod rootless;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// For tests/common/rootless.rs: the daemon it copies for the test user.
fn layerfs_bin() -> PathBuf {
    layerctl_bin().with_file_name("layerfs")
}

const RUNTIMES: [&str; 2] = ["crun", "bwrap"];

/// A busybox root file system without the runtime's mount points (/dev, /proc, /sys,
/// /run, /etc/hosts, ...), as minimal images (and `FROM scratch` builds) are.
fn bare_busybox(root: &Path) {
    rootless::busybox_rootfs(root);
    for d in ["dev", "proc", "sys"] {
        fs::remove_dir(root.join(d)).unwrap();
    }
    // Fixed times: the same tree always gives the same layer.
    sh(root, "find . -exec touch -h -d @1000000000 {} +");
}

fn import_bb(env: &Env) -> PathBuf {
    let rootfs = env.path("bb");
    bare_busybox(&rootfs);
    env.ok(&["import", rootfs.to_str().unwrap(), "bb:1"]);
    rootfs
}

/// The entry names of the top layer of `image`, as its canonical tar holds them.
fn top_layer_names(env: &Env, image: &str) -> Vec<String> {
    let v = env.json(&["inspect", image]);
    let ids = v["image"]["config"]["rootfs"]["diff_ids"]
        .as_array()
        .unwrap();
    let top = ids.last().unwrap().as_str().unwrap();
    let out = env.path("top.tar");
    env.ok(&["layer-tar", top, "-o", out.to_str().unwrap()]);
    let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The runtime's mount points and files never reach diff or the committed layer; what
/// the command writes (a file in a new /run) does. With `--` so that the old command line
/// runs it too.
#[test]
fn runtime_mount_points_stay_out_of_diff_and_commit() {
    let env = Env::new();
    import_bb(&env);
    for rt in RUNTIMES {
        let name = format!("leak-{rt}");
        let img = format!("bb:{rt}");
        let o = env.run(&[
            "run",
            "--runtime",
            rt,
            "--name",
            &name,
            "--commit",
            &img,
            "bb:1",
            "--",
            "sh",
            "-c",
            "mkdir -p /app && test -d /proc/self && test -c /dev/null",
        ]);
        assert_eq!(o.status.code(), Some(0), "{rt}: {}", stderr(&o));
        assert_eq!(env.ok(&["diff", &name]), "A /app", "{rt}: diff");
        assert_eq!(
            top_layer_names(&env, &img),
            ["app/"],
            "{rt}: committed layer"
        );
        // The runtime's files are there for the command, and still not in the diff.
        let name1 = format!("files-{rt}");
        let o = env.run(&[
            "run", "--runtime", rt, "--name", &name1, "bb:1", "--", "sh", "-c",
            "grep -q localhost /etc/hosts && test -s /etc/hostname && test -e /etc/resolv.conf && test -e /run/.containerenv",
        ]);
        assert_eq!(o.status.code(), Some(0), "{rt}: {}", stderr(&o));
        assert_eq!(env.ok(&["diff", &name1]), "", "{rt}: diff");
        // Content the command writes where only the init layer had something is seen.
        let name2 = format!("writes-{rt}");
        let o = env.run(&[
            "run",
            "--runtime",
            rt,
            "--name",
            &name2,
            "bb:1",
            "--",
            "sh",
            "-c",
            "echo 1 > /run/app.pid",
        ]);
        assert_eq!(o.status.code(), Some(0), "{rt}: {}", stderr(&o));
        assert_eq!(
            env.ok(&["diff", &name2]),
            "A /run\nA /run/app.pid",
            "{rt}: diff of a write into /run"
        );
    }
    env.fsck_clean();
}

/// A directory the image has keeps the image's owner, mode and times in the container
/// even though the init layer adds a mount point below it.
#[test]
fn init_layer_keeps_the_images_directories() {
    let env = Env::new();
    let rootfs = env.path("bb");
    bare_busybox(&rootfs);
    fs::set_permissions(rootfs.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::lchown(rootfs.join("etc"), Some(7), Some(8)).unwrap();
    sh(&rootfs, "touch -d @1000000000 etc");
    env.ok(&["import", rootfs.to_str().unwrap(), "bb:1"]);
    for rt in RUNTIMES {
        let o = env.run(&[
            "run",
            "--rm",
            "--runtime",
            rt,
            "bb:1",
            "stat",
            "-c",
            "%a %u %g %Y",
            "/etc",
        ]);
        assert_eq!(
            stdout(&o).trim(),
            "750 7 8 1000000000",
            "{rt}: {}",
            stderr(&o)
        );
    }
}

/// A command that exits non-zero is not committed and the tag stays where it was;
/// --commit-on-failure commits it anyway.
#[test]
fn failed_command_is_not_committed() {
    let env = Env::new();
    import_bb(&env);
    for rt in RUNTIMES {
        let good = env.ok(&[
            "run",
            "--runtime",
            rt,
            "--rm",
            "--commit",
            "bb:app",
            "bb:1",
            "--",
            "sh",
            "-c",
            "echo good > /app.conf",
        ]);
        let good_id = good.lines().last().unwrap().to_string();
        let o = env.run(&[
            "run",
            "--runtime",
            rt,
            "--rm",
            "--commit",
            "bb:app",
            "bb:1",
            "--",
            "sh",
            "-c",
            "echo broken > /app.conf; exit 1",
        ]);
        assert_eq!(o.status.code(), Some(1), "{rt}: the command's status");
        assert!(
            stdout(&o).is_empty(),
            "{rt}: no image id printed: {}",
            stdout(&o)
        );
        assert!(
            stderr(&o).contains("not committed: the command exited with status 1"),
            "{rt}: {}",
            stderr(&o)
        );
        let v = env.json(&["inspect", "bb:app"]);
        assert_eq!(v["image"]["id"], good_id.as_str(), "{rt}: the tag moved");
        let o = env.run(&["run", "--rm", "--runtime", rt, "bb:app", "cat", "/app.conf"]);
        assert_eq!(stdout(&o), "good\n", "{rt}");
        let o = env.run(&[
            "run",
            "--runtime",
            rt,
            "--rm",
            "--commit",
            "bb:broken",
            "--commit-on-failure",
            "bb:1",
            "--",
            "sh",
            "-c",
            "echo broken > /app.conf; exit 3",
        ]);
        assert_eq!(o.status.code(), Some(3), "{rt}: {}", stderr(&o));
        let o = env.run(&[
            "run",
            "--rm",
            "--runtime",
            rt,
            "bb:broken",
            "cat",
            "/app.conf",
        ]);
        assert_eq!(stdout(&o), "broken\n", "{rt}");
    }
}

/// The command line as docker run reads it.
#[test]
fn docker_run_command_line() {
    let env = Env::new();
    import_bb(&env);
    // An image with Entrypoint and Cmd.
    let m = env.path("m");
    fs::create_dir(&m).unwrap();
    env.ok(&["mount", "bb:1", m.to_str().unwrap(), "--name", "cfg"]);
    env.ok(&["umount", "cfg"]);
    env.ok(&[
        "commit",
        "cfg",
        "bb:ep",
        "--change",
        r#"ENTRYPOINT ["/bin/echo", "ep"]"#,
        "--change",
        r#"CMD ["c1", "c2"]"#,
        "--change",
        "ENV FROM_IMAGE=img",
    ]);
    let host = env.path("host");
    fs::create_dir(&host).unwrap();
    fs::write(host.join("in"), "from host\n").unwrap();
    let envfile = env.path("envfile");
    fs::write(
        &envfile,
        "# comment\nFROM_FILE=file\n\nFROM_IMAGE=overridden\n",
    )
    .unwrap();
    for rt in RUNTIMES {
        let run = |args: &[&str]| {
            let mut a = vec!["run", "--rm", "--runtime", rt];
            a.extend_from_slice(args);
            let o = env.run(&a);
            assert!(o.status.success(), "{rt} {args:?}: {}", stderr(&o));
            stdout(&o)
        };
        // No `--` needed; options after IMAGE belong to the command.
        assert_eq!(run(&["bb:1", "echo", "--rm", "-x"]), "--rm -x\n", "{rt}");
        assert_eq!(run(&["bb:ep"]), "ep c1 c2\n", "{rt}: Entrypoint + Cmd");
        assert_eq!(run(&["bb:ep", "x"]), "ep x\n", "{rt}: COMMAND replaces Cmd");
        assert_eq!(
            run(&["--entrypoint", "/bin/echo", "bb:ep", "y"]),
            "y\n",
            "{rt}: --entrypoint"
        );
        let out = run(&[
            "-e",
            "A=1",
            "-e",
            "LAYERCTL_TEST_HOST_VAR",
            "--env-file",
            envfile.to_str().unwrap(),
            "-w",
            "/etc",
            "-u",
            "5:6",
            "bb:ep",
            "--entrypoint",
            "",
        ]);
        // (--entrypoint after IMAGE is part of the command: echo prints it.)
        assert_eq!(out, "ep --entrypoint \n", "{rt}");
        let mut a = vec!["run", "--rm", "--runtime", rt];
        a.extend_from_slice(&[
            "-e",
            "A=1",
            "-e",
            "LAYERCTL_TEST_HOST_VAR",
            "--env-file",
            envfile.to_str().unwrap(),
            "-w",
            "/etc",
            "-u",
            "5:6",
            "--entrypoint",
            "",
            "bb:ep",
            "sh",
            "-c",
            "echo $A $LAYERCTL_TEST_HOST_VAR $FROM_FILE $FROM_IMAGE $(pwd) $(id -u):$(id -g)",
        ]);
        let o = env
            .cmd(&a)
            .env("LAYERCTL_TEST_HOST_VAR", "hostval")
            .output()
            .unwrap();
        assert_eq!(
            stdout(&o),
            "1 hostval file overridden /etc 5:6\n",
            "{rt}: {}",
            stderr(&o)
        );
        // Volumes: read-write and read-only.
        let vol = format!("{}:/data", host.display());
        let volro = format!("{}:/ro:ro", host.display());
        let out = run(&[
            "-v",
            &vol,
            "-v",
            &volro,
            "bb:1",
            "sh",
            "-c",
            "cat /data/in; echo back > /data/out; echo x > /ro/x 2>/dev/null && echo WROTE; true",
        ]);
        assert_eq!(out, "from host\n", "{rt}: volumes");
        assert_eq!(fs::read_to_string(host.join("out")).unwrap(), "back\n");
        assert!(!host.join("x").exists(), "{rt}: the :ro volume was written");
        fs::remove_file(host.join("out")).unwrap();
        // -i: stdin reaches the command; without it, the command's stdin is empty.
        for (flag, want) in [("-i", "piped\n"), ("", "")] {
            let mut a = vec!["run", "--rm", "--runtime", rt];
            if !flag.is_empty() {
                a.push(flag);
            }
            a.extend_from_slice(&["bb:1", "cat"]);
            let mut c = env.cmd(&a);
            c.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut ch = c.spawn().unwrap();
            use std::io::Write;
            let _ = ch.stdin.take().unwrap().write_all(b"piped\n");
            let o = ch.wait_with_output().unwrap();
            assert_eq!(stdout(&o), want, "{rt} {flag:?}: {}", stderr(&o));
        }
        // --read-only: the root file system refuses writes.
        let o = env.run(&[
            "run",
            "--rm",
            "--runtime",
            rt,
            "--read-only",
            "bb:1",
            "touch",
            "/x",
        ]);
        assert!(!o.status.success(), "{rt}: --read-only allowed a write");
        // --name and the hostname.
        assert_eq!(
            run(&["--name", &format!("web-{rt}"), "bb:1", "hostname"]),
            format!("web-{rt}\n")
        );
        // Bad input: one line, before anything is mounted.
        env.fails(&["run", "--runtime", rt, "bb:1"], "no command");
        env.fails(
            &["run", "-v", "data:/data", "bb:1", "true"],
            "named volumes are not supported",
        );
        env.fails(
            &["run", "--network", "bridge0", "bb:1", "true"],
            "unknown network",
        );
        // A bad --commit name fails before the command runs.
        env.fails(
            &[
                "run", "--commit", "Bad:Name", "--name", "never", "bb:1", "true",
            ],
            "invalid image name",
        );
        assert!(!env.root.join("containers/never").exists());
    }
    env.fsck_clean();
}

/// -t gives the command a real pty when stdin is a terminal (`script` provides one).
#[test]
fn tty_when_stdin_is_a_terminal() {
    rootless::require_tool("script", "util-linux");
    let env = Env::new();
    import_bb(&env);
    for rt in RUNTIMES {
        for (flags, want) in [("-it", "tty"), ("", "notty")] {
            let line = format!(
                "{} --root {} run --rm --runtime {rt} {flags} bb:1 sh -c 'test -t 0 && test -t 1 && echo tty || echo notty'",
                layerctl_bin().display(),
                env.root.display()
            );
            // `script` needs an open stdin that stays open while the command runs.
            let o = Command::new("sh")
                .arg("-c")
                .arg(format!("sleep 5 | script -qec \"{line}\" /dev/null"))
                .env("LAYERCTL_MOUNT_PROGRAM", mount_program())
                .output()
                .unwrap();
            let out = stdout(&o);
            assert!(
                out.lines().any(|l| l.trim() == want),
                "{rt} {flags:?}: {out}{}",
                stderr(&o)
            );
        }
    }
}

/// The network namespace: `none` (default) has only loopback; `host` is the host's.
#[test]
fn network_none_and_host() {
    let env = Env::new();
    import_bb(&env);
    let devs = |text: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|s| s.trim().to_string())
            .collect();
        v.sort();
        v
    };
    let host = devs(&fs::read_to_string("/proc/net/dev").unwrap());
    for rt in RUNTIMES {
        for (net, want) in [(None, vec!["lo".to_string()]), (Some("host"), host.clone())] {
            let mut a = vec!["run", "--rm", "--runtime", rt];
            if let Some(n) = net {
                a.extend_from_slice(&["--network", n]);
            }
            a.extend_from_slice(&["bb:1", "cat", "/proc/net/dev"]);
            let o = env.run(&a);
            assert!(o.status.success(), "{rt}: {}", stderr(&o));
            assert_eq!(devs(&stdout(&o)), want, "{rt} --network {net:?}");
        }
    }
}

/// As root: without --userns the container is real root, and layerctl says so; with
/// --userns=auto its ids are a subordinate range, the image's files are owned by the
/// container's users inside, and what it writes lands unshifted in the upper.
#[test]
fn root_real_or_userns_auto() {
    let env = Env::new();
    // The subordinate ids must reach the store and the mount.
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let have = fs::read_to_string("/etc/subuid")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("root:") || l.starts_with("containers:"));
    if !have {
        // Changes the host (README: what the tests change): root gets a range.
        let st = Command::new("usermod")
            .args([
                "--add-subuids",
                "400000-465535",
                "--add-subgids",
                "400000-465535",
                "root",
            ])
            .status()
            .expect("usermod");
        assert!(st.success(), "usermod --add-subuids for root failed");
    }
    import_bb(&env);
    let o = env.run(&[
        "run",
        "--rm",
        "--runtime",
        "crun",
        "bb:1",
        "cat",
        "/proc/self/uid_map",
    ]);
    assert_eq!(
        stdout(&o).split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "4294967295"]
    );
    assert!(
        stderr(&o).contains("runs as real root on this host"),
        "{}",
        stderr(&o)
    );
    let o = env.run(&[
        "run",
        "--runtime",
        "crun",
        "--userns=auto",
        "--name",
        "ua",
        "bb:1",
        "sh",
        "-c",
        "cat /proc/self/uid_map; stat -c %u:%g /bin/busybox; echo x > /f; chown 5:6 /f",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map[0], "0");
    assert_ne!(
        map[1], "0",
        "--userns=auto maps container root to host root"
    );
    assert_eq!(map[2], "65536");
    assert_eq!(lines.next(), Some("0:0"), "the image's files inside");
    assert!(
        stderr(&o).contains("runs in a user namespace"),
        "{}",
        stderr(&o)
    );
    let m = fs::symlink_metadata(env.root.join("containers/ua/upper/f")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (5, 6),
        "upper keeps the container's ids"
    );
    assert_eq!(env.ok(&["diff", "ua"]), "A /f");
    env.fails(
        &["run", "--runtime", "bwrap", "--userns=auto", "bb:1", "true"],
        "needs crun",
    );
}

/// As an ordinary user (crun and bubblewrap): the same init layer keeps the runtime's
/// mount points out, and a failed command is not committed.
#[test]
fn rootless_run_diff_and_commit() {
    let user = rootless::fuse_user();
    let dir = rootless::UserDir::new(&user);
    bare_busybox(&dir.p("bb"));
    rootless::chown_tree(dir.path(), user.uid, user.gid);
    let script = format!(
        r#"{prelude}
export LAYERFS_ROOT={d}/store
layerctl import {d}/bb bb:1 >/dev/null
for rt in crun bwrap; do
    layerctl run --runtime $rt --name c-$rt --commit bb:$rt bb:1 -- sh -c 'mkdir /app; test -d /proc/self; test -c /dev/null' >/dev/null
    test "$(layerctl diff c-$rt)" = "A /app"
    set +e
    layerctl run --runtime $rt --rm --commit bb:$rt bb:1 sh -c 'echo x > /bad; exit 4' 2>{d}/err-$rt
    rc=$?
    set -e
    test $rc = 4
    grep -q "not committed" {d}/err-$rt
    layerctl run --rm --runtime $rt bb:$rt test ! -e /bad
    layerctl run --rm --runtime $rt bb:$rt test -d /app
done
layerctl fsck | grep -q "store is clean"
"#,
        prelude = rootless::SH_PRELUDE,
        d = dir.path().display()
    );
    rootless::user_ok(&user, &script, &[]);
    // The committed layers hold the command's directory only.
    for rt in RUNTIMES {
        let upper = dir.p(&format!("store/containers/c-{rt}/upper"));
        let names: Vec<String> = fs::read_dir(&upper)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["app"], "{rt}: upper");
    }
}

/// SIGTERM to layerctl while the container runs goes to the container (as docker run
/// proxies it); layerctl then unmounts, removes the container (--rm) and exits with the
/// command's status.
#[test]
fn sigterm_reaches_the_container_and_layerctl_cleans_up() {
    let env = Env::new();
    import_bb(&env);
    for rt in RUNTIMES {
        let name = format!("term-{rt}");
        let mut c = env
            .cmd(&[
                "run",
                "--rm",
                "--runtime",
                rt,
                "--name",
                &name,
                "bb:1",
                "sh",
                "-c",
                "trap 'exit 7' TERM; echo ready; sleep 30 & wait",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line, "ready\n", "{rt}");
        let start = std::time::Instant::now();
        let st = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let status = c.wait().unwrap();
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{rt}: layerctl took {:?} after SIGTERM",
            start.elapsed()
        );
        // crun passes it to the container's shell (its trap exits 7); bubblewrap ends
        // with the signal itself.
        assert!(
            matches!(status.code(), Some(7) | Some(143)),
            "{rt}: exit {status}"
        );
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(env.root.to_str().unwrap()),
            "{rt}: a mount is left in the store"
        );
        assert!(
            !env.root.join("containers").join(&name).exists(),
            "{rt}: --rm"
        );
        assert_eq!(
            fs::read_dir(env.root.join("run")).unwrap().count(),
            0,
            "{rt}: run/"
        );
    }
    env.fsck_clean();
}
