//! Open file and directory handles.

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

#[derive(Default)]
pub struct Handles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Handle>>>,
}

impl Handles {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Handle>>> {
        lock(&self.open)
    }

    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open().insert(fh, Arc::new(handle));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.open().get(&fh).cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.open().remove(&fh)
    }
}
