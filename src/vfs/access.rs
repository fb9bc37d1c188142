//! Who may do what: the kernel's rule for owners and modes, applied here
//! rather than by `default_permissions` so that a denied open reaches the
//! daemon (and the audit log) instead of ending in the kernel.

use super::inode::Node;
use super::namespace::{Namespace, Ownership};
use super::{Caller, CredFs};
use crate::caller::{ProcStatus, read_status};
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
        self.check_access_as(ns, node, &mut Credentials::of(caller), want)
    }

    /// `check_access` with credentials already read, for checks of many
    /// entries on behalf of one caller (an aggregated file).
    pub(super) fn check_access_as(
        &self,
        ns: &Namespace,
        node: &Node,
        credentials: &mut Credentials,
        want: u16,
    ) -> Result<()> {
        let mut ancestor = node.parent();
        while let Some(dir) = ancestor {
            if !allows(self.ownership(ns, &dir), SEARCH, true, credentials) {
                return Err(Error::denied(format!("{}: permission denied", dir.path())));
            }
            ancestor = dir.parent();
        }
        let ownership = self.ownership(ns, node);
        if allows(ownership, want, node.is_dir(), credentials) {
            Ok(())
        } else {
            Err(Error::denied(format!("{}: permission denied", node.path())))
        }
    }

    /// chmod, chown and utime: only the owner, or a caller with
    /// CAP_FOWNER, as the kernel has it.
    pub(super) fn check_owner(&self, ns: &Namespace, node: &Node, caller: Caller) -> Result<()> {
        let owner = self.ownership(ns, node).uid;
        let mut credentials = Credentials::of(caller);
        if caller.uid == owner || credentials.has(CAP_FOWNER) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotPermitted,
                format!("{}: not the owner", node.path()),
            ))
        }
    }
}

/// The kernel's `generic_permission`: the one class of bits that applies
/// (owner, else group, else other) decides, and only a capability lets a
/// caller past them, whatever its uid.
fn allows(ownership: Ownership, want: u16, dir: bool, credentials: &mut Credentials) -> bool {
    let caller = credentials.caller;
    let granted = if caller.uid == ownership.uid {
        ownership.perm >> 6
    } else if caller.gid == ownership.gid || credentials.in_group(ownership.gid) {
        ownership.perm >> 3
    } else {
        ownership.perm
    } & 0o7;
    if granted & want == want {
        return true;
    }
    if dir {
        return (want & WRITE == 0 && credentials.has(CAP_DAC_READ_SEARCH))
            || credentials.has(CAP_DAC_OVERRIDE);
    }
    if want == READ && credentials.has(CAP_DAC_READ_SEARCH) {
        return true;
    }
    // Even CAP_DAC_OVERRIDE executes only what some execute bit allows.
    (want & SEARCH == 0 || ownership.perm & 0o111 != 0) && credentials.has(CAP_DAC_OVERRIDE)
}

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_FOWNER: u32 = 3;

/// The caller's ids, and what /proc says of its other groups and its
/// effective capabilities, read once and only when a check needs them.
pub(super) struct Credentials {
    caller: Caller,
    status: Option<ProcStatus>,
}

impl Credentials {
    pub(super) fn of(caller: Caller) -> Self {
        Credentials {
            caller,
            status: None,
        }
    }

    fn status(&mut self) -> &ProcStatus {
        let pid = self.caller.pid;
        self.status.get_or_insert_with(|| read_status(pid))
    }

    fn in_group(&mut self, gid: u32) -> bool {
        self.status().groups.contains(&gid)
    }

    fn has(&mut self, capability: u32) -> bool {
        self.status().effective_caps & (1 << capability) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(uid: u32, gid: u32, caps: &[u32]) -> Credentials {
        Credentials {
            caller: Caller { pid: 0, uid, gid },
            status: Some(ProcStatus {
                groups: vec![30],
                effective_caps: caps.iter().fold(0, |all, cap| all | 1 << cap),
                thread_group: None,
            }),
        }
    }

    fn check(perm: u16, who: (u32, u32), caps: &[u32], want: u16, dir: bool) -> bool {
        let ownership = Ownership {
            uid: 10,
            gid: 20,
            perm,
        };
        allows(ownership, want, dir, &mut credentials(who.0, who.1, caps))
    }

    #[test]
    fn owner_group_and_other_bits_decide_in_that_order() {
        assert!(check(0o400, (10, 99), &[], READ, false));
        assert!(!check(0o400, (11, 20), &[], READ, false));
        assert!(check(0o440, (11, 20), &[], READ, false));
        // The owner class decides even when "other" would allow more.
        assert!(!check(0o044, (10, 99), &[], READ, false));
        assert!(!check(0o440, (11, 21), &[], READ, false));
        assert!(check(0o444, (11, 21), &[], READ, false));
        assert!(!check(0o444, (11, 21), &[], WRITE, false));
        assert!(check(0o500, (10, 20), &[], READ | SEARCH, true));
    }

    #[test]
    fn supplementary_groups_count() {
        let ownership = Ownership {
            uid: 10,
            gid: 30,
            perm: 0o440,
        };
        assert!(allows(
            ownership,
            READ,
            false,
            &mut credentials(11, 99, &[])
        ));
    }

    #[test]
    fn root_without_capabilities_gets_the_mode_bits() {
        assert!(!check(0o400, (0, 0), &[], READ, false));
        assert!(!check(0o500, (0, 0), &[], SEARCH, true));
        assert!(check(0o444, (0, 0), &[], READ, false));
    }

    #[test]
    fn capabilities_pass_the_mode_bits_as_the_kernel_allows() {
        let full = [CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH];
        assert!(check(0o000, (0, 0), &full, READ | WRITE, false));
        assert!(check(0o000, (0, 0), &full, SEARCH, true));
        assert!(!check(0o600, (0, 0), &full, SEARCH, false));
        // Read-search reads and searches, but never writes.
        let read_search = [CAP_DAC_READ_SEARCH];
        assert!(check(0o000, (1000, 1000), &read_search, READ, false));
        assert!(check(
            0o000,
            (1000, 1000),
            &read_search,
            READ | SEARCH,
            true
        ));
        assert!(!check(0o000, (1000, 1000), &read_search, WRITE, false));
        assert!(!check(0o000, (1000, 1000), &read_search, WRITE, true));
        // A capability counts for any uid, not only for root.
        assert!(check(
            0o000,
            (1000, 1000),
            &[CAP_DAC_OVERRIDE],
            WRITE,
            false
        ));
    }
}
