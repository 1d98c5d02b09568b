//! Hard links of an image changed through one name, as the container shows them: `diff`
//! lists every name as changed, and `commit` writes them all as one inode with the new
//! content; a name the container deleted stays deleted.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

#[test]
fn every_name_of_a_changed_hard_link_set_is_changed_in_diff_and_commit() {
    let env = Env::new();
    let root = env.path("rootfs");
    fs::create_dir_all(root.join("d")).unwrap();
    fs::create_dir_all(root.join("e")).unwrap();
    fs::write(root.join("d/a"), "one\n").unwrap();
    fs::hard_link(root.join("d/a"), root.join("d/b")).unwrap();
    fs::hard_link(root.join("d/a"), root.join("c")).unwrap();
    fs::hard_link(root.join("d/a"), root.join("e/gone")).unwrap();
    fs::write(root.join("other"), "x\n").unwrap();
    env.ok(&["import", root.to_str().unwrap(), "links:1"]);
    let (mnt, _g) = env.mount_new("links:1", "mnt", "c1");
    sh(&mnt, "printf 'two\\n' >> d/a; rm e/gone");
    // What the container shows: one inode, new content, under three names.
    for n in ["d/a", "d/b", "c"] {
        assert_eq!(
            fs::read_to_string(mnt.join(n)).unwrap(),
            "one\ntwo\n",
            "{n}"
        );
    }
    let diff = env.ok(&["diff", "c1"]);
    let lines: Vec<&str> = diff.lines().collect();
    for want in ["C /d/a", "C /d/b", "C /c", "D /e/gone"] {
        assert!(lines.contains(&want), "diff lacks {want:?}:\n{diff}");
    }
    assert!(!lines.contains(&"C /e/gone"), "{diff}");
    assert!(!lines.contains(&"C /other"), "{diff}");
    env.ok(&["commit", "c1", "links:2"]);
    let (m2, _g2) = env.mount_new("links:2", "mnt2", "c2");
    let ino = fs::metadata(m2.join("d/a")).unwrap().ino();
    for n in ["d/a", "d/b", "c"] {
        assert_eq!(fs::read_to_string(m2.join(n)).unwrap(), "one\ntwo\n", "{n}");
        assert_eq!(
            fs::metadata(m2.join(n)).unwrap().ino(),
            ino,
            "{n} is one inode"
        );
    }
    assert!(!m2.join("e/gone").exists());
    assert_eq!(fs::read_to_string(m2.join("other")).unwrap(), "x\n");
    env.ok(&["umount", "c2"]);
    env.ok(&["umount", "c1"]);
    env.fsck_clean();
}
