//! The multipart uploads this daemon has started and not yet completed or
//! aborted, one small file each in its own directory (`instance`) under
//! `<state directory>/multipart/`. A daemon that dies mid-upload (a crash,
//! SIGKILL, a stop that did not wait for the abort) leaves its entries,
//! and the next daemon to open a store for that endpoint and bucket aborts
//! them, so no parts stay billed. An entry names the upload (endpoint,
//! bucket, key, upload id), never a credential.

use super::instance::{self, Leftover};
use super::spool::TrustedDir;
use crate::error::{Error, Result};
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const WHAT: &str = "journal directory";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The endpoint URL, or `aws` for AWS S3 itself.
    pub endpoint: String,
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
}

/// One upload's entry; it stays on disk until `remove`, whatever happens
/// to the process.
pub struct Entry {
    dir: Arc<TrustedDir>,
    name: String,
}

impl Entry {
    /// The upload was completed or aborted. Blocking.
    pub fn remove(self) {
        let _ = self.dir.unlink(&self.name);
    }
}

fn root() -> Result<TrustedDir> {
    TrustedDir::open(&crate::config::state_dir().join("multipart"), WHAT)
}

/// Notes an upload about to get parts. Blocking.
pub fn record(record: &Record) -> Result<Entry> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = instance::claim(&root()?, WHAT)?;
    let name = format!("{}.json", NEXT.fetch_add(1, Ordering::Relaxed));
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir.fd(), name.as_str(), flags, Mode::from_raw_mode(0o600))
        .map_err(|e| Error::from_io(dir.shown(&name), &e.into()))?;
    let mut file = std::fs::File::from(fd);
    let text = serde_json::to_vec(record).map_err(|e| Error::provider(e.to_string()))?;
    // Synced: a power cut must not lose the only trace of billed parts.
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::from_io(dir.shown(&name), &e))?;
    Ok(Entry { dir, name })
}

/// An entry a dead daemon left.
pub struct Orphan {
    pub record: Record,
    root: Arc<TrustedDir>,
    leftover: Arc<Leftover>,
    name: String,
}

impl Orphan {
    /// The upload is gone (aborted, or unknown to the server): drops the
    /// entry, and the dead daemon's directory once it is empty. Blocking.
    pub fn forget(self) {
        let _ = self.leftover.dir.unlink(&self.name);
        self.leftover.remove_if_empty(&self.root);
    }
}

/// The entries of dead daemons for which `mine` holds. Unreadable ones (a
/// crash while one was written) name no upload and are dropped. Blocking.
pub fn orphans(mine: impl Fn(&Record) -> bool) -> Result<Vec<Orphan>> {
    let root = Arc::new(root()?);
    let mut found = Vec::new();
    for leftover in instance::leftovers(&root, WHAT) {
        let leftover = Arc::new(leftover);
        for name in leftover.entries() {
            let Some(record) = read(&leftover.dir, &name) else {
                let _ = leftover.dir.unlink(&name);
                continue;
            };
            if mine(&record) {
                found.push(Orphan {
                    record,
                    root: root.clone(),
                    leftover: leftover.clone(),
                    name,
                });
            }
        }
        leftover.remove_if_empty(&root);
    }
    Ok(found)
}

fn read(dir: &TrustedDir, name: &str) -> Option<Record> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir.fd(), name, flags, Mode::empty()).ok()?;
    let file = std::fs::File::from(fd);
    // Entries are small; a big one is not ours.
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 64 << 10), &mut text).ok()?;
    serde_json::from_slice(&text).ok()
}
