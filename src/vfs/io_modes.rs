//! The kernel will not mix page-cache opens and passthrough opens (writes
//! going straight to a backing file) of one inode, nor two backing files:
//! such an open fails. We track what each open archive handle uses and only
//! ask for a mode that cannot conflict; direct-I/O opens never conflict.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    Cached,
    Passthrough,
}

#[derive(Default)]
struct Counts {
    cached: usize,
    passthrough: usize,
}

#[derive(Default)]
struct Table {
    by_inode: HashMap<u64, Counts>,
    by_handle: HashMap<u64, (u64, IoMode)>,
}

#[derive(Default)]
pub struct IoModes {
    table: Mutex<Table>,
}

impl IoModes {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `mode` for a new open of `ino` if no other open conflicts;
    /// `record` then ties it to the handle.
    pub fn claim(&self, ino: u64, mode: IoMode) -> bool {
        let mut table = self.table();
        let counts = table.by_inode.entry(ino).or_default();
        let free = match mode {
            IoMode::Cached => counts.passthrough == 0,
            IoMode::Passthrough => counts.passthrough == 0 && counts.cached == 0,
        };
        if free {
            match mode {
                IoMode::Cached => counts.cached += 1,
                IoMode::Passthrough => counts.passthrough += 1,
            }
        }
        free
    }

    pub fn record(&self, fh: u64, ino: u64, mode: IoMode) {
        self.table().by_handle.insert(fh, (ino, mode));
    }

    pub fn release(&self, fh: u64) {
        let mut table = self.table();
        let Some((ino, mode)) = table.by_handle.remove(&fh) else {
            return;
        };
        if let Some(counts) = table.by_inode.get_mut(&ino) {
            match mode {
                IoMode::Cached => counts.cached = counts.cached.saturating_sub(1),
                IoMode::Passthrough => counts.passthrough = counts.passthrough.saturating_sub(1),
            }
            if counts.cached == 0 && counts.passthrough == 0 {
                table.by_inode.remove(&ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_and_passthrough_opens_exclude_each_other() {
        let modes = IoModes::default();
        assert!(modes.claim(5, IoMode::Cached));
        modes.record(1, 5, IoMode::Cached);
        assert!(
            !modes.claim(5, IoMode::Passthrough),
            "a cached reader is open"
        );
        modes.release(1);
        assert!(modes.claim(5, IoMode::Passthrough));
        modes.record(2, 5, IoMode::Passthrough);
        assert!(
            !modes.claim(5, IoMode::Passthrough),
            "one backing file per inode"
        );
        assert!(!modes.claim(5, IoMode::Cached));
        assert!(modes.claim(6, IoMode::Passthrough), "other inodes are free");
        modes.release(2);
        assert!(modes.claim(5, IoMode::Cached));
    }
}
