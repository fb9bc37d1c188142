//! `credfs get IMAGE` (thin-edge's `registry-credentials get IMAGE
//! [--refresh]`, so that can be a symlink to credfs) and
//! `docker-credential-credfs get` (Docker's credential-helper protocol):
//! both answer from a mounted tree.

use crate::registry::matching;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zeroize::Zeroizing;

const DEFAULT_MOUNTPOINT: &str = "/run/credfs";

pub fn mountpoint(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("CREDFS_MOUNT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MOUNTPOINT))
}

/// (name, registry) of every registry this user may read.
fn registries(mount: &Path) -> Result<Vec<(String, String)>, String> {
    let dir = mount.join("registries");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(registry) = std::fs::read_to_string(entry.path().join("registry")) {
            found.push((name, registry));
        }
    }
    found.sort();
    Ok(found)
}

fn read(mount: &Path, name: &str, file: &str) -> Result<Zeroizing<String>, String> {
    let path = mount.join("registries").join(name).join(file);
    let bytes = Zeroizing::new(
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    Ok(Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned()))
}

fn refresh(mount: &Path, name: &str) -> Result<(), String> {
    let path = mount.join("registries").join(name).join("refresh");
    std::fs::write(&path, b"refresh\n").map_err(|e| format!("refreshing {name}: {e}"))
}

fn fail(message: &str) -> ExitCode {
    eprintln!("credfs: {message}");
    ExitCode::from(1)
}

/// Prints `{"username","password"}` for the registry serving `image`.
pub fn thin_edge(image: &str, force_refresh: bool, mount: &Path) -> ExitCode {
    let answer = (|| {
        let found = registries(mount)?;
        let name = matching::best_for_image(image, &found)
            .ok_or_else(|| format!("no registry in {} serves {image}", mount.display()))?;
        if force_refresh {
            refresh(mount, name)?;
        }
        let (username, password) = (
            read(mount, name, "username")?,
            read(mount, name, "password")?,
        );
        Ok::<_, String>(Zeroizing::new(
            json!({ "username": *username, "password": *password }).to_string(),
        ))
    })();
    match answer {
        Ok(text) => {
            println!("{}", *text);
            ExitCode::SUCCESS
        }
        Err(message) => fail(&message),
    }
}

/// Docker's protocol: `get` reads a server URL on stdin and prints
/// `{"ServerURL","Username","Secret"}`; `list` prints server URL → user.
/// The tree is read-only, so `store` and `erase` fail.
pub fn docker(action: &str, mount: &Path) -> ExitCode {
    match action {
        "get" => {
            let mut server = String::new();
            if std::io::stdin().read_to_string(&mut server).is_err() {
                return fail("cannot read the server URL from stdin");
            }
            let server = server.trim();
            let answer = (|| {
                let found = registries(mount)?;
                // Docker recognises this message as "no credentials".
                let name = matching::best_for_server(server, &found)
                    .ok_or_else(|| "credentials not found in native keychain".to_string())?;
                let (username, secret) = (
                    read(mount, name, "username")?,
                    read(mount, name, "password")?,
                );
                Ok::<_, String>(Zeroizing::new(
                    json!({ "ServerURL": server, "Username": *username, "Secret": *secret })
                        .to_string(),
                ))
            })();
            match answer {
                Ok(text) => {
                    println!("{}", *text);
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    println!("{message}");
                    ExitCode::from(1)
                }
            }
        }
        "list" => match registries(mount) {
            Ok(found) => {
                let listing: serde_json::Map<String, serde_json::Value> = found
                    .iter()
                    .filter_map(|(name, registry)| {
                        let user = read(mount, name, "username").ok()?;
                        Some((registry.clone(), json!(*user)))
                    })
                    .collect();
                println!("{}", serde_json::Value::Object(listing));
                ExitCode::SUCCESS
            }
            Err(message) => fail(&message),
        },
        "store" | "erase" => fail("credentials come from the credfs config; the tree is read-only"),
        other => fail(&format!(
            "unknown docker-credential action `{other}`: expected get, list, store or erase"
        )),
    }
}
