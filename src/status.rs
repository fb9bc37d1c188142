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
    },
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
            EntryStatus::Error { at, reason } => json!({
                "state": "error",
                "checked_at": timestamp(*at),
                "reason": reason,
            }),
        }
    }
}

pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}
