//! The daemon's life, in one place: mount, serve (reap staging files,
//! apply config edits), unmount. `credfs mount` turns signals into
//! `Control` and exit codes; tests and benchmarks can run it in process.

use crate::config::watch::ConfigWatcher;
use crate::config::{self, Config};
use crate::fuse::{self, MountOptions};
use crate::systemd;
use crate::vfs::{CredFs, Providers};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

const REAP_INTERVAL: Duration = Duration::from_secs(30);

/// What the daemon is told from outside while it serves (signals, in
/// `credfs mount`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Unmount and return.
    Stop,
    /// Reopen the audit log (logrotate) and reload the config.
    Reopen,
}

/// Mounts `config` on `mountpoint` (else `[mount] path`) and serves it until
/// `Stop` arrives or the tree is unmounted from outside: the reaper of
/// staging files runs, edits of the config apply, and start and reload go
/// through the same steps.
pub async fn run(
    config: Config,
    mut watcher: Option<ConfigWatcher>,
    mountpoint: Option<PathBuf>,
    providers: Providers,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), String> {
    let mountpoint = mountpoint
        .or_else(|| config.mount.path.clone())
        .ok_or("no mount point: give MOUNTPOINT or set [mount] path")?;
    let shown = mountpoint.display().to_string();
    fuse::clean_stale_mount(&mountpoint).map_err(|e| format!("{shown}: {e}"))?;
    if fuse::is_credfs_mount(&mountpoint) {
        return Err(format!("{shown} is already served by a running credfs"));
    }
    std::fs::create_dir_all(&mountpoint).map_err(|e| format!("{shown}: {e}"))?;
    let options = MountOptions {
        allow_other: config.mount.allow_other,
    };
    let config_path = config.path.clone();
    let fs = Arc::new(CredFs::start(config, providers).await?);
    let runtime = tokio::runtime::Handle::current();
    let mount_fs = fs.clone();
    let mount_point = mountpoint.clone();
    let mut mounted =
        tokio::task::spawn_blocking(move || fuse::mount(mount_fs, runtime, &mount_point, &options))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot mount {shown}: {e}"))?;
    info!(mountpoint = %shown, config = %config_path.display(), "mounted");
    systemd::notify("READY=1");

    let reaper = tokio::spawn({
        let fs = fs.clone();
        async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            loop {
                tick.tick().await;
                fs.reap_staging().await;
            }
        }
    });
    let watched = async |watcher: &mut Option<ConfigWatcher>| match watcher {
        Some(watcher) => watcher.changed().await,
        None => std::future::pending().await,
    };
    let mut ended = mounted.ended();
    let ended_outside = loop {
        tokio::select! {
            command = control.recv() => match command {
                Some(Control::Reopen) => {
                    info!("reopening the audit log and reloading the config");
                    fs.audit.reopen();
                    reload(&fs, &config_path, watcher.as_mut()).await;
                }
                Some(Control::Stop) | None => break false,
            },
            _ = &mut ended => break true,
            _ = watched(&mut watcher) => reload(&fs, &config_path, watcher.as_mut()).await,
        }
    };
    reaper.abort();
    systemd::notify("STOPPING=1");
    if ended_outside {
        info!(mountpoint = %shown, "unmounted from outside; exiting");
    } else {
        info!(mountpoint = %shown, "unmounting");
    }
    tokio::task::spawn_blocking(move || match ended_outside {
        true => mounted.join(),
        false => mounted.unmount(&mountpoint),
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("unmounting {shown}: {e}"))
}

/// Loads the config again and serves it if it is valid and different; an
/// invalid one is refused and the running config keeps serving. systemd
/// hears RELOADING=1 and READY=1 around every reload, changed or not.
async fn reload(fs: &CredFs, path: &Path, watcher: Option<&mut ConfigWatcher>) {
    systemd::notify(&systemd::reloading());
    let (loaded, sources) = config::load_watched(path);
    if let Some(watcher) = watcher {
        watcher.set_files(sources);
    }
    match loaded.and_then(|config| refuse_empty(path, config)) {
        Ok(config) if config == fs.namespace().config => {
            fs.clear_error();
            debug!(config = %path.display(), "config unchanged");
        }
        Ok(config) => {
            let running = &fs.namespace().config.mount;
            if (running.allow_other, &running.path)
                != (config.mount.allow_other, &config.mount.path)
            {
                warn!(
                    "[mount] path and allow_other are mount options: they change at the next start"
                );
            }
            let started = std::time::Instant::now();
            fs.reload(config).await;
            let took_ms = started.elapsed().as_millis() as u64;
            info!(config = %path.display(), took_ms, "config reloaded");
        }
        Err(errors) => {
            warn!("config reload refused, keeping the running config: {errors}");
            fs.record_error(format!("config reload refused: {errors}"));
        }
    }
    systemd::notify("READY=1");
}

/// An empty file is what an editor leaves between truncating and writing:
/// serving it would drop every entry for a moment.
fn refuse_empty(path: &Path, config: Config) -> Result<Config, config::ConfigErrors> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.len() == 0 => Err(config::ConfigErrors(vec![config::ConfigError {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: "the config file is empty; refusing to drop every entry (write a comment to serve an empty tree)".into(),
        }])),
        _ => Ok(config),
    }
}
