//! Who made a request, and what /proc says of them: their other groups,
//! their effective capabilities, their process and its name. The kernel
//! gives each request the pid of the calling *thread* as seen from the
//! daemon's pid namespace (0 when it cannot be seen: no groups, no
//! capabilities, no process). A leaf: it depends on nothing in the crate.

/// Who made a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Default)]
pub(crate) struct ProcStatus {
    pub groups: Vec<u32>,
    pub effective_caps: u64,
    /// The process (thread group) the thread belongs to.
    pub thread_group: Option<u32>,
}

pub(crate) fn read_status(pid: u32) -> ProcStatus {
    if pid == 0 {
        return ProcStatus::default();
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    let groups = field("Groups:")
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // Capabilities held in another user namespace govern only the ids that
    // namespace maps; not counting them fails closed.
    let effective_caps = match same_user_namespace(pid) {
        true => field("CapEff:")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .unwrap_or(0),
        false => 0,
    };
    ProcStatus {
        groups,
        effective_caps,
        thread_group: field("Tgid:").and_then(|tgid| tgid.parse().ok()),
    }
}

/// Whether the caller's capabilities govern the same ids as ours: its user
/// namespace maps uids as ours does. Read from `uid_map`, which anyone may
/// read: `/proc/PID/ns/user` needs ptrace access, which the hardened unit
/// (no CAP_SYS_PTRACE) does not have for root callers. A namespace mapping
/// every id as ours is, for the kernel's inode checks, as good as ours.
fn same_user_namespace(pid: u32) -> bool {
    let theirs = std::fs::read(format!("/proc/{pid}/uid_map"));
    let ours = std::fs::read("/proc/self/uid_map");
    matches!((theirs, ours), (Ok(a), Ok(b)) if a == b && !a.is_empty())
}

impl Caller {
    /// The calling process: the same for every thread of a program (Go's,
    /// libuv's and tokio's thread pools open on one thread and close on
    /// another), different in a forked child. A thread the daemon cannot
    /// see stands for itself.
    pub fn process(&self) -> u32 {
        read_status(self.pid).thread_group.unwrap_or(self.pid)
    }
}

/// The caller's command name; empty when the process is gone or outside
/// the daemon's pid namespace.
pub fn process_name(pid: u32) -> String {
    if pid == 0 {
        return String::new();
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|name| name.trim_end().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_of_a_process_names_the_process() {
        let pid = std::process::id();
        let (send, receive) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = send.send(unsafe { libc::gettid() } as u32);
            let _ = wait.recv();
        });
        let tid = receive.recv().expect("tid");
        assert_ne!(tid, pid);
        let caller = |pid| Caller {
            pid,
            uid: 0,
            gid: 0,
        };
        assert_eq!(caller(tid).process(), pid);
        assert_eq!(caller(pid).process(), pid);
        assert_eq!(caller(0).process(), 0);
        let _ = done.send(());
        let _ = worker.join();
    }
}
