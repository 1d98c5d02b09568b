use std::path::PathBuf;
fn main() {
    env_logger::init();
    let a: Vec<String> = std::env::args().collect();
    // mini LOWER1:LOWER2 UPPER WORK MNT
    let lowers = a[1].split(':').map(PathBuf::from).collect();
    let mut c = layerfs::Config::new(lowers, PathBuf::from(&a[4]));
    c.upper = Some(PathBuf::from(&a[2]));
    c.work = Some(PathBuf::from(&a[3]));
    c.read_only = false;
    layerfs::sys::set_umask(0);
    let fs = layerfs::fs::LayerFs::new(&c).unwrap();
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![fuser::MountOption::FSName("layerfs".into()), fuser::MountOption::DefaultPermissions, fuser::MountOption::CUSTOM("allow_other".into())];
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(2);
    cfg.clone_fd = true;
    fuser::mount(fs, &a[4], &cfg).unwrap();
}
