//! Lab plumbing for the XDP tests: network namespaces and veth pairs made with `ip`,
//! removed by Drop guards (also on panic), and a way to make sockets inside a namespace.
//!
//! Every namespace is named `hx-<tag>-<pid>`; namespaces left behind by a killed run
//! (their pid gone) are removed on the next run. Only `ip` processes are spawned, each
//! waited for.

use std::{
    fs::File,
    os::fd::AsFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Runs a command to completion; panics with its stderr on failure.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command; `Err(stderr)` on failure.
pub fn try_run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("spawn {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Deletes `hx-*-<pid>` namespaces whose process no longer exists.
fn reap_stale() {
    let Ok(list) = try_run(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix("hx-").and_then(|r| r.rsplit('-').next()) else {
            continue;
        };
        if let Ok(pid) = pid.parse::<u32>()
            && pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = try_run(&["ip", "netns", "del", name]);
        }
    }
}

/// A network namespace, deleted on drop (which also deletes the interfaces in it).
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        if SEQ.fetch_add(1, Ordering::Relaxed) == 0 {
            reap_stale();
        }
        let name = format!("hx-{tag}-{}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Runs a command inside the namespace with `nsenter --net` (unlike `ip netns exec`
    /// it keeps the host's /sys, so bpffs stays visible).
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let netarg = format!("--net=/var/run/netns/{}", self.name);
        let mut v = vec!["nsenter", netarg.as_str(), "--"];
        v.extend_from_slice(args);
        try_run(&v)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created in `f` stay
    /// in the namespace wherever they are used afterwards; so does an XDP attach by name.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/var/run/netns/{}", self.name)).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = try_run(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: deleting netns {}: {e}", self.name);
        }
    }
}

/// A veth pair with one end in each namespace, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run(&["ip", "link", "add", a_if, "netns", a.name(), "type", "veth", "peer", "name", b_if, "netns", b.name()]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}
