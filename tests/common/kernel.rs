//! Kernel overlayfs mounts of a [`Stack`]: the reference the differential tests hold
//! layerfs against, in the configuration layerfs promises by default (`index=on`,
//! `metacopy=off`, `redirect_dir=on`), or read-only over the lowers with chosen options.

use std::process::Command;

use super::{Backend, Mount, Stack};

impl Stack {
    pub fn mount_kernel(&self, opts: &[&str], with_upper: bool) -> Mount {
        let mut o = format!("lowerdir={}", self.lowerdir());
        if with_upper {
            o += &format!(
                ",upperdir={},workdir={}",
                self.upper.display(),
                self.work.display()
            );
            // The reference configuration: what layerfs promises by default.
            let mut redirect = "redirect_dir=on";
            for x in opts {
                if x.starts_with("redirect_dir=") {
                    redirect = x;
                }
            }
            o += ",index=on,metacopy=off,";
            o += redirect;
        }
        for x in opts {
            if !x.starts_with("redirect_dir=") {
                o += ",";
                o += x;
            }
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(&self.mnt)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t overlay -o {o} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount::mounted(self.mnt.clone(), Backend::Kernel)
    }

    /// A read-only kernel overlayfs mount of the lowers with exactly `opts` added
    /// (`redirect_dir=follow`, say; `mount_kernel` picks its own redirect_dir).
    pub fn mount_kernel_lowers(&self, opts: &[&str]) -> Mount {
        let mut o = format!("lowerdir={}", self.lowerdir());
        for x in opts {
            o += ",";
            o += x;
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(&self.mnt)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t overlay -o {o} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount::mounted(self.mnt.clone(), Backend::Kernel)
    }
}
