//! Which daemon owns what is left on disk. Each daemon (each process that
//! uploads) writes its spool files and journal entries into a directory of
//! its own, `.credfs-instance-<pid>-<random>`, made on first use inside the
//! spool directory, the bucket directory or the journal directory, and
//! holds an exclusive `flock` on the `lock` file in it for its whole life.
//! The kernel drops the lock when the process dies however it dies, so a
//! free lock means the owner is gone, and only then may anyone else remove
//! the directory. A second daemon on the host, `credfs check --probe` and a
//! store reopened by a reload therefore never touch an upload in flight;
//! a reopened store gets the same directory as the store it replaces.

use super::spool::{SPOOL_PREFIX, TrustedDir};
use crate::error::{Error, Result};
use crate::sync::lock;
use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};

/// Names of the directories instances own.
pub const INSTANCE_PREFIX: &str = ".credfs-instance-";
/// The file whose `flock` says the owner is alive.
pub const LOCK: &str = "lock";

/// `<pid>-<random>`: a pid alone comes back after a reboot or in another
/// pid namespace sharing the directory.
pub fn id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        format!("{}-{:016x}", std::process::id(), hasher.finish())
    })
}

fn own_name() -> String {
    format!("{INSTANCE_PREFIX}{}", id())
}

/// A directory this daemon owns, with the lock that says so.
struct Claimed {
    dir: Arc<TrustedDir>,
    _lock: OwnedFd,
}

/// Claimed directories by the (device, inode) of their parent: one per
/// parent for the daemon's life, whichever store asks.
fn claimed() -> std::sync::MutexGuard<'static, HashMap<(u64, u64), Claimed>> {
    static CLAIMED: OnceLock<Mutex<HashMap<(u64, u64), Claimed>>> = OnceLock::new();
    lock(CLAIMED.get_or_init(Mutex::default))
}

/// This daemon's directory in `parent`, made and locked on first use.
/// Blocking.
pub fn claim(parent: &TrustedDir, what: &str) -> Result<Arc<TrustedDir>> {
    let stat =
        rustix::fs::fstat(parent.fd()).map_err(|e| Error::from_io(parent.shown(""), &e.into()))?;
    let key = (stat.st_dev, stat.st_ino);
    let mut claimed = claimed();
    if let Some(found) = claimed.get(&key) {
        return Ok(found.dir.clone());
    }
    // Between making the directory and locking it, another daemon's sweep
    // may find the lock free and remove the directory: a removed directory
    // (no links left) is never used; claim again.
    let mut attempts = 0;
    let (dir, lock) = loop {
        let dir = parent.subdir(&own_name(), what)?;
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let lock = rustix::fs::openat(dir.fd(), LOCK, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| Error::from_io(dir.shown(LOCK), &e.into()))?;
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| Error::from_io(dir.shown(LOCK), &e.into()))?;
        let still_there = rustix::fs::fstat(dir.fd()).is_ok_and(|s| s.st_nlink > 0)
            && rustix::fs::fstat(&lock).is_ok_and(|s| s.st_nlink > 0);
        attempts += 1;
        if still_there || attempts >= 3 {
            break (dir, lock);
        }
    };
    let dir = Arc::new(dir);
    claimed.insert(
        key,
        Claimed {
            dir: dir.clone(),
            _lock: lock,
        },
    );
    Ok(dir)
}

/// At a clean exit: removes this daemon's directories that hold nothing
/// but their lock. One still holding an upload (a stop in the middle of
/// it) stays, for the next start to sweep. By path: no descriptor of the
/// parent is kept all along for this, and `rmdir` takes only an empty
/// directory of this daemon's unique name. Blocking.
pub fn release() {
    for (_, claimed) in claimed().drain() {
        let empty = claimed
            .dir
            .names()
            .is_ok_and(|names| names.iter().all(|n| n == LOCK));
        if empty {
            let _ = claimed.dir.unlink(LOCK);
            let _ = std::fs::remove_dir(claimed.dir.path());
        }
    }
}

/// The directory of an instance that is gone.
pub struct Leftover {
    pub name: String,
    pub dir: TrustedDir,
}

impl Leftover {
    /// What the dead instance left in it, the lock aside.
    pub fn entries(&self) -> Vec<String> {
        let mut names = self.dir.names().unwrap_or_default();
        names.retain(|n| n != LOCK);
        names
    }

    /// Removes everything in it, then the directory. Another sweeper may
    /// be at it too: what is already gone is no error.
    pub fn remove(&self, parent: &TrustedDir) {
        for name in self.entries() {
            let _ = self.dir.unlink(&name);
        }
        self.remove_if_empty(parent);
    }

    /// Removes the directory once nothing but its lock is left in it.
    pub fn remove_if_empty(&self, parent: &TrustedDir) {
        if self.entries().is_empty() {
            let _ = self.dir.unlink(LOCK);
            let _ = rustix::fs::unlinkat(parent.fd(), self.name.as_str(), AtFlags::REMOVEDIR);
        }
    }
}

/// The directories in `parent` whose owner is gone: never this daemon's,
/// never one whose lock is held. A directory without its lock yet is being
/// made by a live daemon and is left alone. Blocking.
pub fn leftovers(parent: &TrustedDir, what: &str) -> Vec<Leftover> {
    let own = own_name();
    let mut found = Vec::new();
    for name in parent.names().unwrap_or_default() {
        if !name.starts_with(INSTANCE_PREFIX) || name == own {
            continue;
        }
        // Another sweeper may have removed it since the listing.
        let Ok(dir) = parent.existing_subdir(&name, what) else {
            continue;
        };
        if owner_is_gone(&dir) {
            found.push(Leftover { name, dir });
        }
    }
    found
}

fn owner_is_gone(dir: &TrustedDir) -> bool {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(lock) = rustix::fs::openat(dir.fd(), LOCK, flags, Mode::empty()) else {
        return false;
    };
    // Dropping `lock` releases the test lock at once.
    rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok()
}

/// Removes what dead daemons left in `parent`: their directories, and the
/// loose spool files of versions that kept them there. Blocking.
/// Sweeps a shared spool directory off the async workers.
pub async fn sweep_spool(spool_dir: &std::sync::Arc<TrustedDir>) {
    let spool_dir = spool_dir.clone();
    let _ = super::blocking(move || {
        sweep(&spool_dir, "spool directory");
        Ok(())
    })
    .await;
}

pub fn sweep(parent: &TrustedDir, what: &str) {
    let mut removed = 0;
    for leftover in leftovers(parent, what) {
        removed += leftover.entries().len();
        leftover.remove(parent);
    }
    for name in parent.names().unwrap_or_default() {
        if name.starts_with(SPOOL_PREFIX)
            && trust_is_file(parent, &name)
            && parent.unlink(&name).is_ok()
        {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(
            directory = %parent.shown(""),
            removed,
            "removed the spool files of stopped daemons"
        );
    }
}

fn trust_is_file(dir: &TrustedDir, name: &str) -> bool {
    crate::trust::stat_in(dir.fd(), name).is_ok_and(|s| crate::trust::is_regular(&s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn only_the_directories_of_dead_owners_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let parent = TrustedDir::open(root.path(), "spool directory").unwrap();
        let mine = claim(&parent, "spool directory").unwrap();
        assert!(Arc::ptr_eq(
            &mine,
            &claim(&parent, "spool directory").unwrap()
        ));
        std::fs::write(root.path().join(own_name()).join("mine"), "x").unwrap();

        // A live owner: its lock is held (by another open file here).
        let live = root.path().join(format!("{INSTANCE_PREFIX}1-live"));
        std::fs::create_dir(&live).unwrap();
        std::fs::write(live.join("upload"), "x").unwrap();
        let held = std::fs::File::create(live.join(LOCK)).unwrap();
        rustix::fs::flock(&held, FlockOperation::NonBlockingLockExclusive).unwrap();

        // A dead owner, and a loose file of an older version.
        let dead = root.path().join(format!("{INSTANCE_PREFIX}2-dead"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK), "").unwrap();
        std::fs::write(dead.join("upload"), "x").unwrap();
        std::fs::write(root.path().join(format!("{SPOOL_PREFIX}9-0")), "x").unwrap();

        sweep(&parent, "spool directory");
        assert!(root.path().join(own_name()).join("mine").exists());
        assert!(live.join("upload").exists());
        assert!(!Path::new(&dead).exists());
        assert!(!root.path().join(format!("{SPOOL_PREFIX}9-0")).exists());
    }
}
