//! Who may do what: the kernel's rule for owners and modes, applied here
//! rather than by `default_permissions` so that a denied open reaches the
//! daemon (and the audit log) instead of ending in the kernel.

use super::inode::Node;
use super::namespace::{Namespace, Ownership};
use super::{Caller, CredFs};
use crate::error::{Error, ErrorKind, Result};

/// Permission bits asked for, as in `access(2)`.
pub const READ: u16 = 4;
pub const WRITE: u16 = 2;
pub const SEARCH: u16 = 1;

impl CredFs {
    /// Whether `caller` may do `want` to `node`, having searched every
    /// directory above it. Checked on each open, so a dentry the kernel
    /// cached for one user does not let another past a directory.
    pub(super) fn check_access(
        &self,
        ns: &Namespace,
        node: &Node,
        caller: Caller,
        want: u16,
    ) -> Result<()> {
        let mut groups = SupplementaryGroups::of(caller.pid);
        let mut ancestor = node.parent();
        while let Some(dir) = ancestor {
            if !allows(self.ownership(ns, &dir), caller, SEARCH, true, &mut groups) {
                return Err(Error::denied(format!("{}: permission denied", dir.path())));
            }
            ancestor = dir.parent();
        }
        let ownership = self.ownership(ns, node);
        if allows(ownership, caller, want, node.is_dir(), &mut groups) {
            Ok(())
        } else {
            Err(Error::denied(format!("{}: permission denied", node.path())))
        }
    }

    /// chmod, chown and utime: only the owner or root, as the kernel has it.
    pub(super) fn check_owner(&self, ns: &Namespace, node: &Node, caller: Caller) -> Result<()> {
        let owner = self.ownership(ns, node).uid;
        if caller.uid == 0 || caller.uid == owner {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotPermitted,
                format!("{}: not the owner", node.path()),
            ))
        }
    }
}

fn allows(
    ownership: Ownership,
    caller: Caller,
    want: u16,
    dir: bool,
    groups: &mut SupplementaryGroups,
) -> bool {
    if caller.uid == 0 {
        // Root reads, writes and searches anything, but executes only
        // what some execute bit allows.
        return dir || want & SEARCH == 0 || ownership.perm & 0o111 != 0;
    }
    let granted = if caller.uid == ownership.uid {
        ownership.perm >> 6
    } else if caller.gid == ownership.gid || groups.contains(ownership.gid) {
        ownership.perm >> 3
    } else {
        ownership.perm
    } & 0o7;
    granted & want == want
}

/// The caller's other groups, read from /proc only when a group decides.
struct SupplementaryGroups {
    pid: u32,
    loaded: Option<Vec<u32>>,
}

impl SupplementaryGroups {
    fn of(pid: u32) -> Self {
        SupplementaryGroups { pid, loaded: None }
    }

    fn contains(&mut self, gid: u32) -> bool {
        let pid = self.pid;
        self.loaded
            .get_or_insert_with(|| read_groups(pid))
            .contains(&gid)
    }
}

/// `Groups:` of /proc/PID/status; the kernel gives the caller's pid as seen
/// from the daemon's pid namespace (0 when it cannot be seen: no groups).
fn read_groups(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32) -> Caller {
        Caller { pid: 0, uid, gid }
    }

    fn check(perm: u16, who: Caller, want: u16, dir: bool) -> bool {
        let ownership = Ownership {
            uid: 10,
            gid: 20,
            perm,
        };
        let mut groups = SupplementaryGroups {
            pid: 0,
            loaded: Some(vec![30]),
        };
        allows(ownership, who, want, dir, &mut groups)
    }

    #[test]
    fn owner_group_and_other_bits_decide_in_that_order() {
        assert!(check(0o400, caller(10, 99), READ, false));
        assert!(!check(0o400, caller(11, 20), READ, false));
        assert!(check(0o440, caller(11, 20), READ, false));
        // The owner class decides even when "other" would allow more.
        assert!(!check(0o044, caller(10, 99), READ, false));
        assert!(!check(0o440, caller(11, 21), READ, false));
        assert!(check(0o444, caller(11, 21), READ, false));
        assert!(!check(0o444, caller(11, 21), WRITE, false));
        assert!(check(0o500, caller(10, 20), READ | SEARCH, true));
    }

    #[test]
    fn supplementary_groups_count() {
        let mut member = caller(11, 99);
        member.pid = 0;
        let ownership = Ownership {
            uid: 10,
            gid: 30,
            perm: 0o440,
        };
        let mut groups = SupplementaryGroups {
            pid: 0,
            loaded: Some(vec![30]),
        };
        assert!(allows(ownership, member, READ, false, &mut groups));
    }

    #[test]
    fn root_passes_except_for_execute_without_any_x_bit() {
        assert!(check(0o000, caller(0, 0), READ | WRITE, false));
        assert!(check(0o000, caller(0, 0), SEARCH, true));
        assert!(!check(0o600, caller(0, 0), SEARCH, false));
    }
}
