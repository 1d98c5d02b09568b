//! The package check scripts/test runs before building (scripts/deps.sh), run the way a
//! fresh machine meets it: with a PATH that lacks one of the tools, it must say so in one
//! line naming the tool and the package, and fail; with everything there, say nothing.
//! (The install step itself is proved by CI's run of scripts/test on its machine.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deps_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/deps.sh")
}

/// Runs `script` after sourcing deps.sh, with PATH = `path`.
fn with_deps(script: &str, path: &str) -> Output {
    Command::new("/bin/bash")
        .arg("-c")
        .arg(format!(". '{}' && {script}", deps_sh().display()))
        .env_clear()
        .env("PATH", path)
        .output()
        .expect("running bash")
}

/// (package, command) pairs of the list whose thing is a command.
fn commands() -> Vec<(String, String)> {
    let o = with_deps(
        r#"while read -r p w; do [ -n "$p" ] && case $w in /*) ;; *) echo "$p $w";; esac; done <<<"$LAYERFS_DEPS"; true"#,
        "/usr/bin:/bin",
    );
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let (p, w) = l.split_once(' ').unwrap();
            (p.to_string(), w.to_string())
        })
        .collect()
}

/// A directory of symlinks to every listed command except `without`.
fn path_without(dir: &Path, without: &str) -> String {
    let host = std::env::var("PATH").unwrap_or_default();
    for (pkg, cmd) in commands() {
        if cmd == without {
            continue;
        }
        let real = std::env::split_paths(&host)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|d| d.join(&cmd))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("`{cmd}` is not installed here (apt-get install {pkg}); the suite needs it")
            });
        let link = dir.join(&cmd);
        if !link.exists() {
            std::os::unix::fs::symlink(real, link).unwrap();
        }
    }
    dir.display().to_string()
}

#[test]
fn package_check_names_the_one_missing_tool() {
    let tmp = tempfile::tempdir().unwrap();
    let all = tmp.path().join("all");
    fs::create_dir(&all).unwrap();
    let o = with_deps("deps_check scripts/test", &path_without(&all, ""));
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "every tool present, yet: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for (tool, pkg) in [
        ("setfacl", "acl"),
        ("crun", "crun"),
        ("busybox", "busybox-static"),
    ] {
        let dir = tmp.path().join(format!("no-{tool}"));
        fs::create_dir(&dir).unwrap();
        let o = with_deps("deps_check scripts/test", &path_without(&dir, tool));
        assert_eq!(
            o.status.code(),
            Some(1),
            "{tool} missing must fail the check"
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            format!("scripts/test: missing {tool} (apt-get install {pkg})\n")
        );
    }
    // Check-only mode (no install) reports the same way through deps_ensure.
    let dir = tmp.path().join("ensure");
    fs::create_dir(&dir).unwrap();
    let mut o = Command::new("/bin/bash");
    o.arg("-c")
        .arg(format!(
            ". '{}' && deps_ensure scripts/test",
            deps_sh().display()
        ))
        .env_clear()
        .env("PATH", path_without(&dir, "skopeo"))
        .env("LAYERFS_NO_INSTALL", "1");
    let o = o.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "scripts/test: missing skopeo (apt-get install skopeo)\n"
    );
}

/// scripts/test and .ci/run both read the list from scripts/deps.sh (one place), and
/// scripts/test checks it before building anything.
#[test]
fn one_package_list_checked_before_the_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let test = fs::read_to_string(root.join("scripts/test")).unwrap();
    let ci = fs::read_to_string(root.join(".ci/run")).unwrap();
    let check = test
        .find("deps_ensure")
        .expect("scripts/test runs deps_ensure");
    let build = test
        .find("\ncargo test")
        .expect("scripts/test runs cargo test");
    assert!(
        check < build,
        "the package check must come before the build"
    );
    assert!(ci.contains("deps_packages") && ci.contains(". scripts/deps.sh"));
    assert!(
        !ci.contains("skopeo umoci"),
        ".ci/run must not keep its own copy of the package list"
    );
}
