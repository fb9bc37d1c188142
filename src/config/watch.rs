//! Tells when the config file, or a secret file it names, changed. The
//! directories are watched, not the files: editors replace a file by
//! renaming another over it, Kubernetes swaps a symlink, and a deleted file
//! may come back, each of which leaves an inode watch looking at nothing.

use crate::sync::lock;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tracing::{debug, warn};

/// An edit is a burst of events (truncate, write, close; or create, write,
/// rename): act once it has been quiet this long...
const QUIET: Duration = Duration::from_millis(50);
/// ...or this long after it began, whichever is first.
const MAX_DELAY: Duration = Duration::from_millis(300);
/// Bigger files are compared by size and time alone, not by content.
const MAX_HASHED: u64 = 1 << 20;

/// What a change of a watched file looks like from outside: its content
/// (hashed, never kept), owner and mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    digest: u64,
    len: u64,
    mode: u32,
    uid: u32,
}

pub struct ConfigWatcher {
    watcher: RecommendedWatcher,
    /// The watched files as named and as resolved: what an event must touch
    /// to matter.
    targets: Arc<Mutex<Vec<PathBuf>>>,
    events: mpsc::UnboundedReceiver<()>,
    dirs: BTreeSet<PathBuf>,
    files: Vec<(PathBuf, Option<Stamp>)>,
}

impl ConfigWatcher {
    /// Watches `files` (the config first, then the secret files it read).
    pub fn new(files: Vec<PathBuf>) -> notify::Result<Self> {
        let (sender, events) = mpsc::unbounded_channel();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let relevant_to = targets.clone();
        let watcher =
            notify::recommended_watcher(move |event: notify::Result<Event>| match event {
                Ok(event) if !is_change(&event.kind) => {}
                Ok(event) if !touches_targets(&event.paths, &relevant_to) => {}
                Ok(_) => {
                    let _ = sender.send(());
                }
                Err(e) => warn!(error = %e, "config watch failed"),
            })?;
        let mut this = ConfigWatcher {
            watcher,
            targets,
            events,
            dirs: BTreeSet::new(),
            files: Vec::new(),
        };
        this.set_files(files);
        Ok(this)
    }

    /// Watches these files from now on (a new config can name other secret
    /// files). A file already watched keeps the state seen before the load
    /// that named it, so an edit racing that load is still a change.
    pub fn set_files(&mut self, files: Vec<PathBuf>) {
        let seen: Vec<(PathBuf, Option<Stamp>)> = files
            .into_iter()
            .map(|file| {
                let known = self.files.iter().find(|(f, _)| *f == file);
                let state = known.map_or_else(|| stamp(&file), |(_, s)| *s);
                (file, state)
            })
            .collect();
        self.files = seen;
        self.rewatch();
    }

    /// Waits until a watched file's content, owner or mode is not what it
    /// was when last seen.
    pub async fn changed(&mut self) {
        loop {
            if self.events.recv().await.is_none() {
                return std::future::pending().await;
            }
            self.settle().await;
            // A swapped symlink or a created directory moves what to watch.
            self.rewatch();
            let mut changed = false;
            for (path, seen) in &mut self.files {
                let now = stamp(path);
                if now != *seen {
                    debug!(file = %path.display(), "watched file changed");
                    *seen = now;
                    changed = true;
                }
            }
            if changed {
                return;
            }
        }
    }

    async fn settle(&mut self) {
        let deadline = Instant::now() + MAX_DELAY;
        loop {
            let quiet_until = (Instant::now() + QUIET).min(deadline);
            match timeout(quiet_until - Instant::now(), self.events.recv()).await {
                Ok(Some(())) if Instant::now() < deadline => continue,
                Ok(Some(())) => return,
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn rewatch(&mut self) {
        let targets: Vec<PathBuf> = self
            .files
            .iter()
            .flat_map(|(path, _)| [Some(path.clone()), std::fs::canonicalize(path).ok()])
            .flatten()
            .collect();
        *lock(&self.targets) = targets;
        let wanted: BTreeSet<PathBuf> = self
            .files
            .iter()
            .flat_map(|(path, _)| dirs_to_watch(path))
            .collect();
        for gone in self.dirs.difference(&wanted) {
            // Fails harmlessly when the directory itself is gone.
            let _ = self.watcher.unwatch(gone);
        }
        for dir in wanted.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), error = %e, "cannot watch for config changes");
            }
        }
        self.dirs = wanted;
    }
}

/// Whether an event is about a watched file, a directory on the way to one
/// (one being created), or a symlink (a Kubernetes `..data` swap); a busy
/// log file next to the config is none of these.
fn touches_targets(paths: &[PathBuf], targets: &Mutex<Vec<PathBuf>>) -> bool {
    let targets = lock(targets);
    paths.iter().any(|path| {
        targets.iter().any(|target| target.starts_with(path))
            || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
    })
}

/// Reads and opens are not changes; a close after writing is.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The directory holding `path` and, when `path` leads through symlinks,
/// the directory of the file it resolves to. A directory that does not exist
/// yet is stood in for by its nearest existing ancestor.
fn dirs_to_watch(path: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(parent) = path.parent() {
        dirs.push(existing_ancestor(parent));
    }
    if let Some(parent) = std::fs::canonicalize(path)
        .ok()
        .and_then(|target| target.parent().map(Path::to_path_buf))
    {
        dirs.push(parent);
    }
    dirs
}

fn existing_ancestor(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = std::fs::metadata(path).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if metadata.len() <= MAX_HASHED {
        let bytes = zeroize::Zeroizing::new(std::fs::read(path).ok()?);
        bytes.hash(&mut hasher);
    } else {
        (metadata.mtime(), metadata.mtime_nsec(), metadata.ino()).hash(&mut hasher);
    }
    Some(Stamp {
        digest: hasher.finish(),
        len: metadata.len(),
        mode: metadata.mode(),
        uid: metadata.uid(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_file_watches_both_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("data");
        std::fs::create_dir(&real).expect("mkdir");
        std::fs::write(real.join("credfs.toml"), "").expect("write");
        let link = dir.path().join("credfs.toml");
        std::os::unix::fs::symlink("data/credfs.toml", &link).expect("symlink");
        let dirs = dirs_to_watch(&link);
        let canonical_dir = std::fs::canonicalize(dir.path()).expect("canonicalize");
        assert_eq!(
            dirs,
            vec![dir.path().to_path_buf(), canonical_dir.join("data")]
        );
    }

    #[test]
    fn only_events_on_the_way_to_a_watched_file_matter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("credfs.toml");
        let secret = dir.path().join("later/secret");
        let targets = Mutex::new(vec![config.clone(), secret.clone()]);
        assert!(touches_targets(&[config], &targets));
        assert!(touches_targets(&[dir.path().join("later")], &targets));
        assert!(!touches_targets(&[dir.path().join("daemon.log")], &targets));
        std::os::unix::fs::symlink("x", dir.path().join("..data")).expect("symlink");
        assert!(touches_targets(&[dir.path().join("..data")], &targets));
    }

    #[test]
    fn a_missing_directory_is_watched_through_its_ancestor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not/yet/secret");
        assert_eq!(dirs_to_watch(&file), vec![dir.path().to_path_buf()]);
    }

    #[test]
    fn stamps_change_with_content_and_mode_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret");
        std::fs::write(&file, "one").expect("write");
        let first = stamp(&file);
        assert!(first.is_some());
        std::fs::write(&file, "one").expect("write");
        assert_eq!(stamp(&file), first, "rewriting the same bytes is no change");
        std::fs::write(&file, "two").expect("write");
        assert_ne!(stamp(&file), first);
        std::fs::remove_file(&file).expect("remove");
        assert_eq!(stamp(&file), None);
    }
}
