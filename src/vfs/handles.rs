//! Open file and directory handles.
//!
//! A handle number carries the daemon's epoch in its top 16 bits and, in
//! bit 47, whether it writes. A daemon that adopts a live FUSE connection
//! takes a new epoch, so a number the kernel got from the daemon before
//! never names one of this daemon's handles: a reader's is reopened by
//! its inode, a writer's fails (`Handles::foreign`).

use super::Kind;
use crate::secret::Secret;
use crate::store::ObjectReader;
use crate::sync::lock;
use crate::upload::{Pending, WriteHandle};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

impl DirEntry {
    pub fn new(ino: u64, kind: Kind, name: impl Into<String>) -> Self {
        DirEntry {
            ino,
            kind,
            name: name.into(),
        }
    }
}

pub enum Handle {
    /// One consistent value for the life of the handle.
    Value(Secret),
    Archive(Box<dyn ObjectReader>),
    /// Reading a file that is created but not committed yet.
    Pending(Arc<Pending>),
    Write(Arc<WriteHandle>),
    /// `registries/<name>/refresh` open for writing.
    Refresh(String),
    Dir(Vec<DirEntry>),
}

const EPOCH_SHIFT: u32 = 48;
const WRITES: u64 = 1 << 47;
const SERIAL: u64 = WRITES - 1;

/// A handle number of the daemon before this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Foreign {
    Reader,
    Writer,
}

#[derive(Default)]
pub struct Handles {
    epoch: AtomicU64,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Handle>>>,
    /// The previous daemon's reader handles, reopened here: theirs → ours.
    adopted: Mutex<HashMap<u64, u64>>,
}

impl Handles {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Handle>>> {
        lock(&self.open)
    }

    /// Sets the epoch, before any handle is made.
    pub fn set_epoch(&self, epoch: u16) {
        self.epoch.store(u64::from(epoch), Ordering::Relaxed);
    }

    pub fn epoch(&self) -> u16 {
        self.epoch.load(Ordering::Relaxed) as u16
    }

    pub fn insert(&self, handle: Handle) -> u64 {
        let serial = (self.next.fetch_add(1, Ordering::Relaxed) + 1) & SERIAL;
        let writes = match handle {
            Handle::Write(_) | Handle::Refresh(_) => WRITES,
            _ => 0,
        };
        let fh = (self.epoch.load(Ordering::Relaxed) << EPOCH_SHIFT) | writes | serial;
        self.open().insert(fh, Arc::new(handle));
        fh
    }

    /// Whether `fh` is a number of the daemon before this one, and which kind.
    pub fn foreign(&self, fh: u64) -> Option<Foreign> {
        if fh >> EPOCH_SHIFT == self.epoch.load(Ordering::Relaxed) {
            return None;
        }
        Some(match fh & WRITES {
            0 => Foreign::Reader,
            _ => Foreign::Writer,
        })
    }

    /// This daemon's handle standing for the previous daemon's `theirs`.
    pub fn adopted(&self, theirs: u64) -> Option<u64> {
        lock(&self.adopted).get(&theirs).copied()
    }

    pub fn adopt(&self, theirs: u64, ours: u64) {
        lock(&self.adopted).insert(theirs, ours);
    }

    pub fn unadopt(&self, theirs: u64) -> Option<u64> {
        lock(&self.adopted).remove(&theirs)
    }

    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.open().get(&fh).cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.open().remove(&fh)
    }
}
