//! Health of each entry, as `status.json` reports it. Messages here come from
//! `Error`, which never carries a secret.

use serde_json::{Value, json};
use std::time::SystemTime;

#[derive(Clone, Debug, PartialEq)]
pub enum EntryStatus {
    /// Nothing has been fetched yet.
    Idle,
    Ok {
        at: SystemTime,
        expires_at: Option<SystemTime>,
    },
    Error {
        at: SystemTime,
        reason: String,
        /// A credential provider that failed is not asked again before this
        /// (see `registry::backoff`), unless a refresh is forced.
        retry: Option<Retry>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retry {
    pub at: SystemTime,
    /// Failures in a row, the one at `at` of the status included.
    pub failures: u32,
}

impl EntryStatus {
    pub fn ok(expires_at: Option<SystemTime>) -> Self {
        EntryStatus::Ok {
            at: SystemTime::now(),
            expires_at,
        }
    }

    pub fn error(reason: impl Into<String>) -> Self {
        EntryStatus::Error {
            at: SystemTime::now(),
            reason: reason.into(),
            retry: None,
        }
    }

    /// A failure that will be retried at `retry.at`.
    pub fn failing(reason: impl Into<String>, retry: Retry) -> Self {
        EntryStatus::Error {
            at: SystemTime::now(),
            reason: reason.into(),
            retry: Some(retry),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            EntryStatus::Idle => json!({ "state": "idle" }),
            EntryStatus::Ok { at, expires_at } => json!({
                "state": "ok",
                "checked_at": timestamp(*at),
                "expires_at": expires_at.map(timestamp),
            }),
            EntryStatus::Error { at, reason, retry } => {
                let mut entry = json!({
                    "state": "error",
                    "checked_at": timestamp(*at),
                    "reason": reason,
                });
                if let Some(retry) = retry {
                    // Milliseconds: the first rests last about a second.
                    entry["retry_at"] = json!(timestamp_millis(retry.at));
                    entry["failures"] = json!(retry.failures);
                }
                entry
            }
        }
    }
}

pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(formattable(at)).to_string()
}

pub fn timestamp_millis(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(formattable(at)).to_string()
}

/// 9999-12-31T23:59:59Z: RFC 3339 has four digits for the year, and
/// formatting a later time fails (a panic in `to_string`).
pub fn latest() -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_799)
}

/// `at`, clamped to what a timestamp can show. An expiry that far away
/// (`ttl = "8000y"`, a provider's bogus answer) is "never" in effect.
pub fn formattable(at: SystemTime) -> SystemTime {
    at.min(latest())
}

/// `now + life`, clamped rather than overflowing.
pub fn after(now: SystemTime, life: std::time::Duration) -> SystemTime {
    now.checked_add(life).map_or_else(latest, formattable)
}
