//! The daemon's life, in one place: mount, serve (reap staging files,
//! apply config edits), unmount. `credfs mount` turns signals into
//! `Control` and exit codes; tests and benchmarks can run it in process.

use crate::config::watch::ConfigWatcher;
use crate::config::{self, Config};
use crate::fuse::handover::{self, Inherited, Successor};
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
    /// Exit at once without unmounting, for systemd to start the next
    /// daemon with the stored connection (an upgrade in place, SIGUSR2).
    Restart,
}

/// The exit status of a daemon that leaves its mount to the next one:
/// non-zero, so that `Restart=on-failure` starts it.
pub const EXIT_FOR_RESTART: i32 = 75;

/// How the daemon comes by its FUSE connection.
pub enum Connection {
    /// Mounts afresh (after detaching a dead daemon's mount).
    Mount,
    /// The live connection systemd kept for us (`LISTEN_FDS`).
    Inherited(Inherited),
    /// The live connection of the running daemon (`--takeover`), which
    /// leaves once this one is ready.
    TakenOver(Inherited, Successor),
}

/// Mounts `config` on `mountpoint` (else `[mount] path`), or adopts a live
/// connection there, and serves it until `Stop` arrives, the tree is
/// unmounted from outside, or a successor takes it over: the reaper of
/// staging files runs, edits of the config apply, and start and reload go
/// through the same steps.
pub async fn run(
    config: Config,
    mut watcher: Option<ConfigWatcher>,
    mountpoint: Option<PathBuf>,
    providers: Providers,
    mut control: mpsc::Receiver<Control>,
    connection: Connection,
) -> Result<(), String> {
    let mountpoint = mountpoint
        .or_else(|| config.mount.path.clone())
        .ok_or("no mount point: give MOUNTPOINT or set [mount] path")?;
    // Made absolute without a look at it (a stat would wait on an adopted
    // mount that nobody serves yet).
    let mountpoint = std::path::absolute(&mountpoint).unwrap_or(mountpoint);
    let shown = mountpoint.display().to_string();
    let (inherited, successor) = match connection {
        Connection::Mount => (None, None),
        Connection::Inherited(inherited) => (Some(inherited), None),
        Connection::TakenOver(inherited, successor) => (Some(inherited), Some(successor)),
    };
    let epoch = inherited
        .as_ref()
        .map_or_else(handover::fresh_epoch, Inherited::next_epoch);
    match &inherited {
        // No stat of the mount point: nobody answers the kernel until
        // this daemon does.
        Some(_) if !fuse::is_credfs_mount(&mountpoint) => {
            return Err(format!("{shown} holds no credfs mount to adopt"));
        }
        Some(_) => {}
        None => {
            fuse::clean_stale_mount(&mountpoint).map_err(|e| format!("{shown}: {e}"))?;
            if fuse::is_credfs_mount(&mountpoint) {
                return Err(format!("{shown} is already served by a running credfs"));
            }
            std::fs::create_dir_all(&mountpoint).map_err(|e| format!("{shown}: {e}"))?;
        }
    }
    let options = MountOptions {
        allow_other: config.mount.allow_other,
    };
    let config_path = config.path.clone();
    let fs = Arc::new(CredFs::start(config, providers).await?);
    fs.set_handle_epoch(epoch);
    if let Some(successor) = successor {
        successor
            .ready()
            .await
            .map_err(|e| format!("taking over {shown}: {e}"))?;
    }
    let runtime = tokio::runtime::Handle::current();
    let mount_fs = fs.clone();
    let mount_point = mountpoint.clone();
    let previous_epoch = inherited.as_ref().map(|i| i.epoch);
    let mut mounted = tokio::task::spawn_blocking(move || match inherited {
        Some(inherited) => fuse::adopt(mount_fs, runtime, inherited.fd, &options),
        None => fuse::mount(mount_fs, runtime, &mount_point, &options),
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot mount {shown}: {e}"))?;
    if previous_epoch.is_some() {
        if let Err(e) = handover::resend(mounted.connection()) {
            warn!(error = %e, "the kernel cannot resend what the daemon before left unanswered (Linux 6.9+ can)");
        }
        info!(mountpoint = %shown, config = %config_path.display(), "adopted the live mount");
    } else {
        info!(mountpoint = %shown, config = %config_path.display(), "mounted");
    }
    keep_for_successor(&mounted, previous_epoch, epoch);
    systemd::notify("READY=1");
    let takeover = listen_for_successor(&mounted, &mountpoint, epoch);

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
                Some(Control::Restart) if std::env::var_os("NOTIFY_SOCKET").is_some() => {
                    info!("exiting for a restart; the next daemon adopts the mount");
                    std::process::exit(EXIT_FOR_RESTART);
                }
                Some(Control::Restart) => {
                    warn!("SIGUSR2 restarts in place only under systemd (its store keeps the mount); ignored");
                }
                Some(Control::Stop) | None => break false,
            },
            _ = &mut ended => break true,
            _ = watched(&mut watcher) => reload(&fs, &config_path, watcher.as_mut()).await,
        }
    };
    reaper.abort();
    if let Some(takeover) = takeover {
        takeover.abort();
    }
    let _ = std::fs::remove_file(handover::socket_path(&mountpoint));
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

/// Keeps the connection in systemd's store, under this daemon's epoch (the
/// next daemon takes the one after): the old name goes first, since systemd
/// would take the same connection again for a duplicate.
fn keep_for_successor(mounted: &fuse::Mounted, previous: Option<u16>, epoch: u16) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Some(previous) = previous {
        systemd::notify(&format!(
            "FDSTOREREMOVE=1\nFDNAME={}",
            handover::store_name(previous)
        ));
    }
    if let Err(e) = handover::store_in_systemd(mounted.connection(), &handover::store_name(epoch)) {
        warn!(error = %e, "cannot keep the FUSE connection in systemd's store; a restart will remount");
    }
}

/// Serves `credfs mount --takeover` from a successor: once it is ready,
/// this process exits at once, leaving the mount to it.
fn listen_for_successor(
    mounted: &fuse::Mounted,
    mountpoint: &Path,
    epoch: u16,
) -> Option<tokio::task::JoinHandle<()>> {
    let listener = handover::listen(mountpoint)
        .map_err(|e| warn!(error = %e, "no takeover socket; an upgrade will remount"))
        .ok()?;
    let connection = mounted
        .connection()
        .try_clone_to_owned()
        .map_err(|e| warn!(error = %e, "no takeover socket"))
        .ok()?;
    Some(tokio::spawn(async move {
        handover::serve(listener, connection, epoch).await;
        // No unmount, no STOPPING: the mount is the successor's now.
        std::process::exit(0);
    }))
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
