//! Least privilege after set-up: once the SIP ports are bound and the XDP program is loaded and
//! attached, the daemon keeps only the capability its map updates need, and only when XDP is
//! attached: `CAP_BPF`. On the appliance's kernel (Debian 12's 6.1, with
//! `kernel.unprivileged_bpf_disabled` set by the image's sysctl hardening) every `bpf(2)`
//! command, map updates on descriptors already held included, is refused without `CAP_BPF`
//! (6.1's `__sys_bpf` checks `bpf_capable()` first while unprivileged BPF is off), and the
//! allowlist swap creates new inner LPM-trie maps (`BPF_MAP_CREATE`) on every reload. The qemu
//! test (`rootfs/test-appliance.sh`) shows the daemon with `CAP_BPF` alone swapping in the
//! timer's export and XDP passing the newly listed source.
//! `CAP_NET_BIND_SERVICE` (binding 5060), `CAP_NET_ADMIN` (attaching XDP; the bpf_link detaches
//! when its descriptor closes) and `CAP_PERFMON` (loading the program) are needed at start only.
//!
//! Capabilities are per thread on Linux: [`drop_to`] runs on the engine's thread before any
//! other thread exists (`Daemon::start` calls it before the STUN, relay and management threads
//! are spawned), and every thread started later inherits the reduced sets. The bounding set
//! is left as the service manager made it (changing it needs `CAP_SETPCAP`); with
//! `no_new_privs` nothing can be regained.

use caps::{CapSet, Capability, CapsHashSet};

/// What the daemon still holds after set-up: `CAP_BPF` when XDP is attached, else nothing.
pub fn needed(xdp_attached: bool) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    if xdp_attached {
        keep.insert(Capability::CAP_BPF);
    }
    keep
}

/// Reduces the effective, permitted, inheritable and ambient sets of the calling thread to
/// `keep` (ambient and inheritable: empty). Keeping a capability the thread does not have is
/// not an error: what is kept is `keep ∩ permitted`. Returns the permitted set left.
pub fn drop_to(keep: &CapsHashSet) -> Result<CapsHashSet, String> {
    let e = |what: &str, err: caps::errors::CapsError| format!("{what}: {err}");
    let permitted = caps::read(None, CapSet::Permitted).map_err(|err| e("reading the permitted set", err))?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    caps::clear(None, CapSet::Ambient).map_err(|err| e("clearing the ambient set", err))?;
    caps::clear(None, CapSet::Inheritable).map_err(|err| e("clearing the inheritable set", err))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|err| e("setting the effective set", err))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|err| e("setting the permitted set", err))?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_xdp_keeps_a_capability_and_that_is_cap_bpf() {
        assert!(needed(false).is_empty());
        assert_eq!(needed(true).into_iter().collect::<Vec<_>>(), [Capability::CAP_BPF]);
    }

    /// In a thread of its own (capabilities are per thread): what is dropped is gone from
    /// /proc/thread-self/status, and cannot be raised again.
    #[test]
    fn dropping_leaves_exactly_the_kept_set_on_the_thread() {
        std::thread::spawn(|| {
            let before = caps::read(None, CapSet::Permitted).unwrap();
            let left = drop_to(&needed(true)).unwrap();
            let want: CapsHashSet = needed(true).intersection(&before).copied().collect();
            assert_eq!(left, want);
            assert_eq!(caps::read(None, CapSet::Effective).unwrap(), want);
            assert_eq!(caps::read(None, CapSet::Permitted).unwrap(), want);
            assert!(caps::read(None, CapSet::Ambient).unwrap().is_empty());
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let prm = status.lines().find_map(|l| l.strip_prefix("CapPrm:")).unwrap().trim().to_string();
            let expect = if want.is_empty() { 0u64 } else { 1u64 << 39 };
            assert_eq!(u64::from_str_radix(&prm, 16).unwrap(), expect, "{status}");
            if before.contains(&Capability::CAP_NET_ADMIN) {
                assert!(caps::raise(None, CapSet::Effective, Capability::CAP_NET_ADMIN).is_err());
            }
        })
        .join()
        .unwrap();
    }
}
