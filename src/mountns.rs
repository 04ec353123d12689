//! Refuses to run kubelet from a private mount namespace.
//!
//! Under Mesos' `filesystem/linux` isolator a task (and so kubelet, its child) runs in its own
//! mount namespace: the volumes kubelet mounts for pods, its pod directories and the container
//! runtime's view of them would diverge from the host's, and they vanish with the task. The
//! agent compares its own mount namespace (`/proc/self/ns/mnt`) with init's
//! (`<host-root>/proc/1/ns/mnt`); when both can be read and differ, `run` stops with one line
//! and exit 78 before anything is started. When init's link cannot be read (no permission, a
//! PID namespace, a fake host root without it) the check cannot tell and lets the agent run.

use std::path::Path;

/// The namespace link's target (`mnt:[4026531840]`), if readable.
fn ns_link(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// `Err(message)` when this process runs in a mount namespace other than init's under
/// `host_root`.
pub fn check(host_root: &Path) -> Result<(), String> {
    let ours = ns_link(Path::new("/proc/self/ns/mnt"));
    let init = ns_link(&host_root.join("proc/1/ns/mnt"));
    match (ours, init) {
        (Some(ours), Some(init)) if ours != init => Err(format!(
            "the agent runs in a private mount namespace ({ours}; the host's init is in {init}), \
             as under Mesos' filesystem/linux isolator: kubelet's pod mounts would not be the host's; \
             run the task on an agent without the filesystem/linux isolator"
        )),
        (ours, init) => {
            tracing::debug!(?ours, ?init, "mount namespace check");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_namespace_is_refused_and_an_unreadable_one_is_not() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(check(dir.path()), Ok(()));
        let ns = dir.path().join("proc/1/ns");
        std::fs::create_dir_all(&ns).expect("mkdir");
        let ours = ns_link(Path::new("/proc/self/ns/mnt")).expect("own namespace");
        std::os::unix::fs::symlink(&ours, ns.join("mnt")).expect("link");
        assert_eq!(check(dir.path()), Ok(()));
        std::fs::remove_file(ns.join("mnt")).expect("rm");
        std::os::unix::fs::symlink("mnt:[1]", ns.join("mnt")).expect("link");
        let err = check(dir.path()).expect_err("private namespace");
        assert!(err.contains("filesystem/linux"), "{err}");
    }
}
