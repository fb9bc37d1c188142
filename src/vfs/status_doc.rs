//! `status.json`: the health of every entry. Built from names, states and
//! error messages only; no value ever goes in.

use super::namespace::Namespace;
use crate::audit::AuditLog;
use crate::config::{FilesystemConfig, StoreProviderConfig};
use crate::secret::Secret;
use crate::status::{EntryStatus, timestamp};
use crate::upload::Uploads;
use serde_json::{Map, Value, json};

pub fn render(
    ns: &Namespace,
    uploads: &Uploads,
    audit: &AuditLog,
    held_inodes: (usize, usize),
    last_error: Option<&EntryStatus>,
) -> Secret {
    let mut registries = Map::new();
    for (name, cached) in &ns.registries {
        let mut entry = cached.status().to_json();
        if let Some(config) = ns.config.registries.get(name) {
            entry["provider"] = json!(config.provider.kind());
            entry["registry"] = json!(config.provider.registry());
        }
        registries.insert(name.clone(), entry);
    }
    let mut stores = Map::new();
    for (name, config) in &ns.config.stores {
        let mut entry = ns
            .store_status
            .get(name)
            .map(|s| s.to_json())
            .unwrap_or(Value::Null);
        entry["provider"] = json!(config.provider.kind());
        entry["buckets"] = json!(config.buckets);
        entry["read_only"] = json!(config.read_only);
        if let StoreProviderConfig::Filesystem(FilesystemConfig { root, .. }) = &config.provider {
            entry["root"] = json!(root.display().to_string());
        }
        let staged: usize = config.buckets.iter().map(|b| uploads.list(b).len()).sum();
        entry["pending_uploads"] = json!(staged);
        stores.insert(name.clone(), entry);
    }
    let secrets: Map<String, Value> = ns
        .config
        .secrets
        .iter()
        .map(|(group, keys)| {
            let names: Vec<&String> = keys.keys().collect();
            (group.clone(), json!({ "state": "ok", "keys": names }))
        })
        .collect();
    let document = json!({
        "config": ns.config.path.display().to_string(),
        "loaded_at": timestamp(ns.loaded_at),
        "last_error": last_error.map(EntryStatus::to_json),
        "registries": registries,
        "stores": stores,
        "secrets": secrets,
        "audit": audit_status(ns, audit),
        // What a daemon running for months must keep bounded.
        "inodes": { "held": held_inodes.0, "cache_tracked": held_inodes.1 },
    });
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    Secret::from(text)
}

fn audit_status(ns: &Namespace, audit: &AuditLog) -> Value {
    let Some(config) = &ns.config.audit else {
        return Value::Null;
    };
    let mut entry = match audit.failure() {
        Some(error) => json!({ "state": "error", "error": error }),
        None => json!({ "state": "ok" }),
    };
    entry["path"] = json!(config.path.display().to_string());
    entry["fail_closed"] = json!(config.fail_closed);
    entry
}
