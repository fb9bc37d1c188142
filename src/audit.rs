//! The audit log of `[audit] path`: one JSON line per open of a secret and
//! per upload, overwrite, rename, delete and refresh, naming who and what,
//! never a value. Names are JSON strings, so no name can forge a line.

use crate::caller::{Caller, process_name};
use crate::error::{Error, ErrorKind, Result};
use crate::sync::lock;
use serde_json::json;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;
use tracing::warn;

/// What was done, as the `op` field says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Open,
    Lookup,
    Upload,
    /// An upload or a rename that replaced an existing archive.
    Overwrite,
    Rename,
    Delete,
    Refresh,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Open => "open",
            Operation::Lookup => "lookup",
            Operation::Upload => "upload",
            Operation::Overwrite => "overwrite",
            Operation::Rename => "rename",
            Operation::Delete => "delete",
            Operation::Refresh => "refresh",
        }
    }
}

#[derive(Default)]
pub struct AuditLog {
    file: Mutex<Option<(PathBuf, File)>>,
    /// Whether a file is configured, read without the lock: most opens
    /// happen with auditing off and must not pay for it.
    enabled: AtomicBool,
    /// `[audit] fail_closed`: an open of a secret that cannot be recorded
    /// fails.
    fail_closed: AtomicBool,
    /// Why the last line could not be written, until one is again.
    failure: Mutex<Option<String>>,
}

impl AuditLog {
    /// Writes to `path` from now on (none: writes nothing). The file is
    /// created 0600 and only ever appended to.
    pub fn configure(&self, path: Option<&Path>) -> std::io::Result<()> {
        let opened = match path {
            Some(path) => Some((path.to_path_buf(), open_append(path)?)),
            None => None,
        };
        let mut slot = lock(&self.file);
        self.enabled.store(opened.is_some(), Ordering::Relaxed);
        *slot = opened;
        Ok(())
    }

    pub fn set_fail_closed(&self, fail_closed: bool) {
        self.fail_closed.store(fail_closed, Ordering::Relaxed);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Why lines are not being written, for `status.json`.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    pub fn path(&self) -> Option<PathBuf> {
        lock(&self.file).as_ref().map(|(p, _)| p.clone())
    }

    /// Opens the path again: after logrotate moved the file away, lines go
    /// to a new one.
    pub fn reopen(&self) {
        let mut slot = lock(&self.file);
        if let Some((path, file)) = slot.as_mut() {
            match open_append(path) {
                Ok(reopened) => *file = reopened,
                Err(e) => warn!(path = %path.display(), error = %e, "cannot reopen the audit log"),
            }
        }
    }

    /// Records one operation; `path` is only built when auditing is on.
    /// A line that cannot be written is a warning, here and in
    /// `status.json`.
    pub fn record(
        &self,
        operation: Operation,
        path: impl FnOnce() -> String,
        actor: Caller,
        result: std::result::Result<(), &Error>,
    ) {
        if self.is_enabled() {
            let _ = self.write(operation, path(), None, actor, result);
        }
    }

    /// Records an open of a secret. With `fail_closed`, a line that cannot
    /// be written is an error (EIO): no secret is handed out unrecorded.
    pub fn record_open(
        &self,
        path: impl FnOnce() -> String,
        actor: Caller,
        result: std::result::Result<(), &Error>,
    ) -> Result<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        match self.write(Operation::Open, path(), None, actor, result) {
            Err(e) if self.fail_closed.load(Ordering::Relaxed) => Err(e),
            _ => Ok(()),
        }
    }

    /// Records a rename of `from` to `to`.
    pub fn record_rename(
        &self,
        from: impl FnOnce() -> String,
        to: impl FnOnce() -> String,
        actor: Caller,
        result: std::result::Result<(), &Error>,
    ) {
        if self.is_enabled() {
            let _ = self.write(Operation::Rename, to(), Some(from()), actor, result);
        }
    }

    fn write(
        &self,
        operation: Operation,
        path: String,
        from: Option<String>,
        actor: Caller,
        result: std::result::Result<(), &Error>,
    ) -> Result<()> {
        let mut line = json!({
            "time": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            "op": operation.name(),
            "path": path,
            "uid": actor.uid,
            "gid": actor.gid,
            "pid": actor.pid,
            "process": process_name(actor.pid),
            "result": match result {
                Ok(()) => "ok",
                Err(e) => e.kind().errno_name(),
            },
        });
        if let Some(from) = from {
            line["from"] = json!(from);
        }
        let mut text = line.to_string();
        text.push('\n');
        let mut slot = lock(&self.file);
        let Some((path, file)) = slot.as_mut() else {
            return Ok(());
        };
        // One write per line on an O_APPEND file: lines never interleave.
        let written = file.write_all(text.as_bytes());
        let failure = written
            .as_ref()
            .err()
            .map(|e| format!("cannot write the audit log {}: {e}", path.display()));
        drop(slot);
        if let Some(message) = &failure {
            warn!(error = %message, "audit line lost");
        }
        *lock(&self.failure) = failure.clone();
        match failure {
            Some(message) => Err(Error::new(ErrorKind::Provider, message)),
            None => Ok(()),
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_operation_caller_and_result() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs/audit.jsonl");
        let audit = AuditLog::default();
        let actor = Caller {
            pid: std::process::id(),
            uid: 1000,
            gid: 1001,
        };
        audit.record(Operation::Open, || "secrets/a/b".into(), actor, Ok(()));
        assert!(!path.exists(), "nothing is written without a path");
        audit.configure(Some(&path)).expect("configure");
        audit.record(Operation::Open, || "secrets/a/b".into(), actor, Ok(()));
        let denied = Error::denied("secrets/a/b: permission denied");
        audit.record(
            Operation::Open,
            || "secrets/a/b".into(),
            actor,
            Err(&denied),
        );
        let text = std::fs::read_to_string(&path).expect("audit log");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["op"], "open");
        assert_eq!(lines[0]["uid"], 1000);
        assert_eq!(lines[0]["gid"], 1001);
        assert_eq!(lines[0]["result"], "ok");
        assert!(!lines[0]["process"].as_str().unwrap_or("").is_empty());
        assert_eq!(lines[1]["result"], "EACCES");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let audit = AuditLog::default();
        audit.configure(Some(&path)).expect("configure");
        let actor = Caller {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        audit.record(
            Operation::Delete,
            || "projects/b/x.zip".into(),
            actor,
            Ok(()),
        );
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).expect("rotate");
        audit.reopen();
        audit.record(
            Operation::Refresh,
            || "registries/r/refresh".into(),
            actor,
            Ok(()),
        );
        let rotated = std::fs::read_to_string(dir.path().join("audit.jsonl.1")).expect("old");
        let fresh = std::fs::read_to_string(&path).expect("new");
        assert!(rotated.contains("\"delete\"") && !rotated.contains("\"refresh\""));
        assert!(fresh.contains("\"refresh\""));
    }
}
