//! `credfs status`: a human summary of a mounted tree's `status.json`.

use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(mountpoint: Option<PathBuf>) -> ExitCode {
    let mountpoint = crate::helper_protocols::mountpoint(mountpoint);
    let path = mountpoint.join("status.json");
    let document: Value = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(document) => document,
        Err(e) => {
            eprintln!("credfs: cannot read {}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "config {} loaded {}",
        text(&document["config"]),
        text(&document["loaded_at"])
    );
    let mut healthy = true;
    for section in ["registries", "stores"] {
        if let Some(entries) = document[section].as_object() {
            for (name, entry) in entries {
                let state = text(&entry["state"]);
                healthy &= state != "error";
                let mut reason = entry["reason"]
                    .as_str()
                    .map(|r| format!("  {r}"))
                    .unwrap_or_default();
                if let Some(at) = entry["retry_at"].as_str() {
                    reason.push_str(&format!(" (next attempt at {at})"));
                }
                println!(
                    "{section:<10} {name:<20} {:<10} {state}{reason}",
                    text(&entry["provider"])
                );
            }
        }
    }
    if let Some(groups) = document["secrets"].as_object() {
        for (name, entry) in groups {
            let keys = entry["keys"].as_array().map_or(0, Vec::len);
            println!("{:<10} {name:<20} {keys} keys", "secrets");
        }
    }
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
