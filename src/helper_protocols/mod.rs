//! The credential-helper protocols over a mounted tree: thin-edge's
//! `registry-credentials get IMAGE [--refresh]` and Docker's
//! `docker-credential-credfs get|list`, and the kubelet's credential
//! provider plugin (`kubelet.rs`). Served by `credfs get` and
//! `credfs docker-credential`, by credfs under those names (symlinks), and
//! by the small `credfs-helper` binary, which starts several times faster
//! than the daemon's binary: a helper runs once per image pull.

mod kubelet;

pub use kubelet::run as kubelet;

use crate::registry::matching;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const DEFAULT_MOUNTPOINT: &str = "/run/credfs";

/// The command line as text. A non-UTF-8 argument is a usage error
/// (exit 2), never a panic: no image, path or name here is anything else.
pub fn utf8_args() -> Result<Vec<String>, ExitCode> {
    std::env::args_os()
        .map(|arg| {
            arg.into_string().map_err(|arg| {
                eprintln!(
                    "credfs: arguments must be UTF-8 text, not {:?}",
                    arg.to_string_lossy()
                );
                ExitCode::from(2)
            })
        })
        .collect()
}

pub fn mountpoint(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("CREDFS_MOUNT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MOUNTPOINT))
}

/// How long one command waits for all the files it reads at once; as long
/// as the daemon waits for the providers behind `docker/config.json`.
const DEADLINE: Duration = Duration::from_secs(10);

/// Reads every path at once, each on its own thread, and returns what was
/// read `within` (`DEADLINE`), in the order given (`None`: unreadable or too slow).
/// A read past the deadline is abandoned: a slow provider behind one file
/// must not hold up the answer from the others. Its thread ends with the
/// process.
fn read_all(paths: &[PathBuf], within: Duration) -> Vec<Option<Zeroizing<Vec<u8>>>> {
    let deadline = Instant::now() + within;
    let (sender, receiver) = mpsc::channel();
    for (index, path) in paths.iter().enumerate() {
        let (reader_sender, reader_path) = (sender.clone(), path.clone());
        let spawned = std::thread::Builder::new().spawn(move || {
            let read = std::fs::read(&reader_path).ok().map(Zeroizing::new);
            // The receiver is gone once the deadline has passed.
            let _ = reader_sender.send((index, read));
        });
        if spawned.is_err() {
            let _ = sender.send((index, std::fs::read(path).ok().map(Zeroizing::new)));
        }
    }
    drop(sender);
    let mut found: Vec<Option<Zeroizing<Vec<u8>>>> = vec![None; paths.len()];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match receiver.recv_timeout(left) {
            Ok((index, read)) => found[index] = read,
            Err(_) => break,
        }
    }
    found
}

/// (name, registry) of every registry this user may read, as far as their
/// `registry` files answered in time.
fn registries(mount: &Path) -> Result<Vec<(String, String)>, String> {
    let dir = mount.join("registries");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let names: Vec<String> = entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let paths: Vec<PathBuf> = names
        .iter()
        .map(|name| dir.join(name).join("registry"))
        .collect();
    let mut found: Vec<(String, String)> = names
        .into_iter()
        .zip(read_all(&paths, DEADLINE))
        .filter_map(|(name, read)| Some((name, String::from_utf8(read?.to_vec()).ok()?)))
        .collect();
    found.sort();
    Ok(found)
}

/// A registry's auth.json, as the daemon rendered it for this process.
struct Auth {
    username: Zeroizing<String>,
    password: Zeroizing<String>,
    registry: String,
    expires_at: Option<String>,
}

/// Username and password of registry `name`, from its auth.json (one read
/// instead of two: helpers run once per pull).
fn credentials(mount: &Path, name: &str) -> Result<(Zeroizing<String>, Zeroizing<String>), String> {
    let auth = read_auth(&auth_json(mount, name))?;
    Ok((auth.username, auth.password))
}

fn auth_json(mount: &Path, name: &str) -> PathBuf {
    mount.join("registries").join(name).join("auth.json")
}

fn read_auth(path: &Path) -> Result<Auth, String> {
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    parse_auth(path, &bytes)
}

fn parse_auth(path: &Path, bytes: &[u8]) -> Result<Auth, String> {
    let auth: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| format!("{} is not JSON", path.display()))?;
    let field = |key: &str| auth[key].as_str().unwrap_or_default().to_string();
    Ok(Auth {
        username: Zeroizing::new(field("username")),
        password: Zeroizing::new(field("password")),
        registry: field("registry"),
        expires_at: auth["expires_at"].as_str().map(str::to_string),
    })
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
        let (username, password) = credentials(mount, name)?;
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
                let (username, secret) = credentials(mount, name)?;
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
                let paths: Vec<PathBuf> = found
                    .iter()
                    .map(|(name, _)| auth_json(mount, name))
                    .collect();
                let listing: serde_json::Map<String, serde_json::Value> = found
                    .iter()
                    .zip(read_all(&paths, DEADLINE))
                    .zip(&paths)
                    .filter_map(|(((_, registry), read), path)| {
                        let auth = parse_auth(path, &read?).ok()?;
                        Some((registry.clone(), json!(*auth.username)))
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

/// Handles a run under a helper's name (`docker-credential-*`,
/// `registry-credentials`); `None` for any other name.
pub fn dispatch_by_name(args: &[String]) -> Option<ExitCode> {
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())?;
    let mount = mountpoint(None);
    if program.starts_with("docker-credential-") {
        let action = args.get(1).map_or("", String::as_str);
        return Some(docker(action, &mount));
    }
    if program == "credfs-kubelet-provider" {
        let mount = match args.get(1..) {
            Some([flag, dir]) if flag == "--mount" => PathBuf::from(dir),
            Some([]) | None => mount,
            _ => return Some(fail("usage: credfs-kubelet-provider [--mount DIR]")),
        };
        return Some(kubelet(&mount));
    }
    if program == "registry-credentials" {
        return Some(match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("get"), Some(image)) => {
                let refresh = args[3..].iter().any(|a| a == "--refresh");
                thin_edge(image, refresh, &mount)
            }
            _ => fail("usage: registry-credentials get IMAGE [--refresh]"),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO stands for a file whose provider hangs: opening it blocks
    /// until a writer comes.
    fn fifo(path: &Path) {
        let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `name` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn reads_at_once_and_leaves_out_what_misses_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = ["a", "slow1", "hung", "slow2", "missing"]
            .iter()
            .map(|name| dir.path().join(name))
            .collect();
        std::fs::write(&paths[0], "ready").unwrap();
        for path in &paths[1..4] {
            fifo(path);
        }
        // Each slow file answers after 300 ms; asked in turn they would take 600.
        let writers: Vec<_> = [&paths[1], &paths[3]]
            .into_iter()
            .map(|path| {
                let path = path.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(300));
                    std::fs::write(path, "late").unwrap();
                })
            })
            .collect();
        let started = Instant::now();
        let read = read_all(&paths, Duration::from_millis(500));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(500),
            "waited for the hung one: {took:?}"
        );
        assert!(took < Duration::from_secs(2), "and returned then: {took:?}");
        let texts: Vec<Option<&[u8]>> = read
            .iter()
            .map(|r| r.as_deref().map(Vec::as_slice))
            .collect();
        assert_eq!(
            texts,
            [
                Some(&b"ready"[..]),
                Some(b"late"),
                None,
                Some(b"late"),
                None
            ]
        );
        for writer in writers {
            writer.join().unwrap();
        }
        // Lets the abandoned reader finish.
        std::fs::write(&paths[2], "").unwrap();
    }
}
