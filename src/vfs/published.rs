//! Keeps the kernel's cached copy of each file honest. The kernel may serve
//! a file from its page cache (and trust its size) only while the content is
//! the one it last saw; when a value changes we tell the kernel to drop its
//! copy, and until it has, opens bypass the cache.
//!
//! A handle opened with the cache kept, on content that has since changed,
//! can still read the old content into the page cache after the kernel
//! dropped it. So while such a handle is open, opens bypass the cache, and
//! when the last one closes the kernel is told to drop its copy once more.

use crate::sync::lock;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

/// The kernel side of cache invalidation (fuser's `Notifier` in the daemon).
pub trait KernelCache: Send + Sync {
    fn invalidate_inode(&self, ino: u64) -> std::io::Result<()>;
    fn invalidate_entry(&self, parent: u64, name: &str) -> std::io::Result<()>;
}

/// Stands for "whatever the kernel has is out of date".
const FORGOTTEN: u64 = 0;

pub fn fingerprint(parts: impl Hash) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The kernel's cached pages and size for this inode match the content.
    pub kernel_copy_valid: bool,
    pub changed_at: SystemTime,
}

struct Seen {
    fingerprint: u64,
    changed_at: SystemTime,
    /// Set while an invalidation for this content is on its way.
    invalidating: Option<u64>,
    /// Open handles that let the kernel cache pages, by the fingerprint of
    /// the content they read.
    cached_handles: HashMap<u64, usize>,
}

impl Seen {
    fn new(fingerprint: u64, changed_at: SystemTime) -> Self {
        Seen {
            fingerprint,
            changed_at,
            invalidating: None,
            cached_handles: HashMap::new(),
        }
    }

    /// Whether a handle on older content may still fill the page cache.
    fn stale_handles(&self) -> bool {
        self.cached_handles
            .iter()
            .any(|(fp, count)| *fp != self.fingerprint && *count > 0)
    }
}

#[derive(Default)]
pub struct Published {
    kernel: OnceLock<Arc<dyn KernelCache>>,
    seen: Mutex<HashMap<u64, Seen>>,
    /// Handle number to the inode and content it was opened on, for the
    /// handles opened with the cache kept.
    claims: Mutex<HashMap<u64, (u64, u64)>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Published {
    pub fn set_kernel(&self, kernel: Arc<dyn KernelCache>) {
        let _ = self.kernel.set(kernel);
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Seen>> {
        lock(&self.seen)
    }

    pub fn observe(self: &Arc<Self>, ino: u64, fingerprint: u64) -> Observed {
        let now = SystemTime::now();
        let mut seen = self.seen();
        let entry = seen
            .entry(ino)
            .or_insert_with(|| Seen::new(fingerprint, now));
        if entry.fingerprint == fingerprint {
            return Observed {
                kernel_copy_valid: entry.invalidating.is_none() && !entry.stale_handles(),
                changed_at: entry.changed_at,
            };
        }
        entry.fingerprint = fingerprint;
        entry.changed_at = now;
        let generation = self.mark_invalidating(entry);
        drop(seen);
        self.invalidate_then(ino, generation);
        Observed {
            kernel_copy_valid: false,
            changed_at: now,
        }
    }

    /// Content of `ino` changed through us (an upload, a delete): the kernel
    /// must drop its copy, and opens bypass the cache until it has.
    pub fn forget(self: &Arc<Self>, ino: u64) {
        let mut seen = self.seen();
        let entry = seen
            .entry(ino)
            .or_insert_with(|| Seen::new(FORGOTTEN, SystemTime::now()));
        entry.fingerprint = FORGOTTEN;
        entry.changed_at = SystemTime::now();
        let generation = self.mark_invalidating(entry);
        drop(seen);
        self.invalidate_then(ino, generation);
    }

    /// Opens bypass the cache until the invalidation numbered by the
    /// returned generation is done.
    fn mark_invalidating(&self, entry: &mut Seen) -> u64 {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        entry.invalidating = Some(generation);
        generation
    }

    /// The kernel forgot `ino` (and with it every page it cached): nothing
    /// about it needs remembering.
    pub fn drop_inode(&self, ino: u64) {
        let mut seen = self.seen();
        if seen.get(&ino).is_some_and(|e| e.cached_handles.is_empty()) {
            seen.remove(&ino);
        }
    }

    /// How many inodes are tracked, for tests and benchmarks.
    pub fn len(&self) -> usize {
        self.seen().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Handle `fh` on content `fingerprint` of `ino` lets the kernel cache
    /// pages.
    pub fn claim(&self, fh: u64, ino: u64, fingerprint: u64) {
        lock(&self.claims).insert(fh, (ino, fingerprint));
        let mut seen = self.seen();
        let entry = seen
            .entry(ino)
            .or_insert_with(|| Seen::new(fingerprint, SystemTime::now()));
        *entry.cached_handles.entry(fingerprint).or_default() += 1;
    }

    /// Handle `fh` is closed; if it was the last one on older content, the
    /// pages it may have read are dropped.
    pub fn release(self: &Arc<Self>, fh: u64) {
        let Some((ino, fingerprint)) = lock(&self.claims).remove(&fh) else {
            return;
        };
        let mut seen = self.seen();
        let Some(entry) = seen.get_mut(&ino) else {
            return;
        };
        if let Some(count) = entry.cached_handles.get_mut(&fingerprint) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                entry.cached_handles.remove(&fingerprint);
            }
        }
        if fingerprint != entry.fingerprint && !entry.stale_handles() {
            let generation = self.mark_invalidating(entry);
            drop(seen);
            self.invalidate_then(ino, generation);
        }
    }

    fn invalidate_then(self: &Arc<Self>, ino: u64, generation: u64) {
        let this = self.clone();
        // The notification can block on kernel locks held by the request
        // being answered, so it never runs on the answering path.
        std::thread::spawn(move || {
            if let Some(kernel) = this.kernel.get() {
                let _ = kernel.invalidate_inode(ino);
            }
            if let Some(entry) = this.seen().get_mut(&ino)
                && entry.invalidating == Some(generation)
            {
                entry.invalidating = None;
            }
        });
    }

    pub fn invalidate_inodes(&self, inodes: Vec<u64>) {
        let Some(kernel) = self.kernel.get().cloned() else {
            return;
        };
        std::thread::spawn(move || {
            for ino in inodes {
                let _ = kernel.invalidate_inode(ino);
            }
        });
    }

    pub fn invalidate_entries(&self, entries: Vec<(u64, String)>) {
        let Some(kernel) = self.kernel.get().cloned() else {
            return;
        };
        std::thread::spawn(move || {
            for (parent, name) in entries {
                let _ = kernel.invalidate_entry(parent, &name);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Recorder(Mutex<mpsc::Sender<u64>>);

    impl KernelCache for Recorder {
        fn invalidate_inode(&self, ino: u64) -> std::io::Result<()> {
            let _ = self.0.lock().unwrap().send(ino);
            Ok(())
        }
        fn invalidate_entry(&self, _: u64, _: &str) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_valid(published: &Arc<Published>, ino: u64, fp: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !published.observe(ino, fp).kernel_copy_valid {
            assert!(std::time::Instant::now() < deadline, "never valid again");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_cached_handle_on_old_content_keeps_opens_direct_until_it_closes() {
        let published = Arc::new(Published::default());
        let (tx, rx) = mpsc::channel();
        published.set_kernel(Arc::new(Recorder(Mutex::new(tx))));
        assert!(published.observe(7, 1).kernel_copy_valid);
        published.claim(100, 7, 1);
        assert!(!published.observe(7, 2).kernel_copy_valid);
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(7));
        // The invalidation is done, but handle 100 may still read old pages.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!published.observe(7, 2).kernel_copy_valid);
        published.release(100);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Ok(7),
            "the last stale handle's close drops the pages again"
        );
        wait_valid(&published, 7, 2);
        // A handle on current content changes nothing.
        published.claim(101, 7, 2);
        assert!(published.observe(7, 2).kernel_copy_valid);
        published.release(101);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_changed_value_is_invalidated_and_bypasses_the_cache_until_then() {
        let published = Arc::new(Published::default());
        let (tx, rx) = mpsc::channel();
        published.set_kernel(Arc::new(Recorder(Mutex::new(tx))));
        assert!(published.observe(7, 1).kernel_copy_valid);
        assert!(published.observe(7, 1).kernel_copy_valid);
        assert!(!published.observe(7, 2).kernel_copy_valid);
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(7));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !published.observe(7, 2).kernel_copy_valid {
            assert!(
                std::time::Instant::now() < deadline,
                "invalidation never completed"
            );
            std::thread::yield_now();
        }
    }
}
