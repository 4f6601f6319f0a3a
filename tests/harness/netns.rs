//! Network namespaces for every lab (the e2e tests, the XDP tests, `just demo`): creating one,
//! deleting it on drop (also on panic), veth pairs between two, running a command inside one
//! (`ip netns exec`) or code on a thread that entered it (`setns`), and removing the namespaces
//! a crashed earlier run left behind.
//!
//! A namespace is named `sbclab-<tag>-<pid>`, the pid being the test process that owns it, so two
//! checkouts can run the same lab at once without sharing or deleting each other's namespaces.
//! A name whose pid no longer exists (or is ours but not one we hold: the pid was reused) belongs
//! to a run that died; every [`Netns::new`] kills what still runs inside such a namespace, by PID,
//! and deletes it. Interface names stay fixed and short (IFNAMSIZ: 15 characters): each lives
//! inside its own namespace, so they never clash between runs.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

use anyhow::{Context, Result, bail, ensure};

/// Marks the namespaces this harness made: only those are ever reaped.
const PREFIX: &str = "sbclab-";
/// Where `ip netns add` mounts a namespace.
const NETNS_DIR: &str = "/var/run/netns";

/// The namespaces this process holds now. A name carrying our pid that is not in here was left
/// by an earlier process that had the same pid.
static HELD: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Runs `cmd` to completion; fails with its output when it exits non-zero.
fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

fn stdout(out: Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args)).map(stdout)
}

/// The pid in a name this harness made (`sbclab-<tag>-<pid>`); `None` for anyone else's.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.rsplit_once('-')?.1.parse().ok()
}

fn is_stale(name: &str, held: &BTreeSet<String>) -> bool {
    match owner_pid(name) {
        None => false,
        Some(pid) if pid == std::process::id() => !held.contains(name),
        Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// Removes every namespace of ours whose owner is gone. Best effort: another process may be
/// reaping the same one.
fn reap_stale(held: &BTreeSet<String>) {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else { return };
    for name in dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()) {
        if is_stale(&name, held) {
            eprintln!("removing netns {name}, left behind by a run that is gone");
            let _ = destroy(&name);
        }
    }
}

/// Kills (SIGKILL, by PID) whatever still runs inside `name`, then deletes the namespace and its
/// `/etc/netns/<name>` (which `ip netns exec` would otherwise mount into a later namespace that
/// gets the same name). A crashed run's peers and SBC would otherwise keep it, its veths and its
/// XDP program alive.
fn destroy(name: &str) -> Result<()> {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            if pid as u32 != std::process::id() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
    ip(&["netns", "del", name]).map(|_| ())
}

/// A network namespace with its loopback up, deleted on drop (with the interfaces in it).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `sbclab-<tag>-<pid>`; stale namespaces of earlier runs are removed first.
    pub fn new(tag: &str) -> Result<Netns> {
        let name = format!("{PREFIX}{tag}-{}", std::process::id());
        {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            ensure!(!held.contains(&name), "netns {name} is already held by this process");
            reap_stale(&held);
            ip(&["netns", "add", &name])?;
            held.insert(name.clone());
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`; its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Adds `addr` (`a.b.c.d/len` or an IPv6 prefix) to `ifname`. IPv6 skips duplicate address
    /// detection, so the address is usable at once.
    pub fn addr(&self, ifname: &str, addr: &str) -> Result<()> {
        if addr.contains(':') {
            self.ip(&["-6", "addr", "add", addr, "dev", ifname, "nodad"])?;
        } else {
            self.ip(&["addr", "add", addr, "dev", ifname])?;
        }
        Ok(())
    }

    /// A command that runs inside the namespace (`ip netns exec`: `/etc/netns/<name>/*` is
    /// mounted over `/etc`, and the namespace's own `/sys`).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `args` (program first) inside the namespace to completion; its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let Some((program, rest)) = args.split_first() else { bail!("exec in {}: no program", self.name) };
        run(self.cmd(program).args(rest)).map(stdout)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
    }

    /// Runs `f` in this process on a thread that entered the namespace (`setns`), so the test's
    /// own threads stay in the host's. Sockets made in `f` stay in the namespace wherever they
    /// are used afterwards; so does an XDP attach by interface name. A panic in `f` is the
    /// caller's panic.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = Path::new(NETNS_DIR).join(&self.name);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        std::thread::scope(|s| {
            let t = s.spawn(|| -> Result<T> {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {}", self.name))?;
                Ok(f())
            });
            t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = destroy(&self.name) {
            eprintln!("warning: deleting netns {}: {e:#}", self.name);
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.name);
    }
}

/// A veth pair, `a_if` in `a` and `b_if` in `b`, both up. The kernel creates each end directly in
/// its namespace, never in the host's, so the fixed names cannot clash with another run's.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    ip(&["link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_have_an_owner() {
        assert_eq!(owner_pid("sbclab-sbl1-ext-4242"), Some(4242));
        assert_eq!(owner_pid("sbclab-x4r-7"), Some(7));
        assert_eq!(owner_pid("sbl1-ext"), None, "another checkout's fixed name");
        assert_eq!(owner_pid("hx-xr-4242"), None);
        assert_eq!(owner_pid("sbclab-ext"), None, "no pid");
    }

    #[test]
    fn stale_means_owner_gone_or_our_pid_not_held() {
        let me = std::process::id();
        let mut held = BTreeSet::new();
        held.insert(format!("sbclab-a-{me}"));
        assert!(!is_stale(&format!("sbclab-a-{me}"), &held));
        assert!(is_stale(&format!("sbclab-b-{me}"), &held), "same pid, earlier process");
        // pid_max is at most 2^22: this pid cannot exist.
        assert!(is_stale("sbclab-a-99999999", &held));
        assert!(!is_stale("sbclab-a-1", &held), "init is alive: its namespaces stay");
        assert!(!is_stale("other-a-99999999", &held), "not ours");
    }
}
