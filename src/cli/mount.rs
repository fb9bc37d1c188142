//! `credfs mount`: load, mount, serve until a signal, unmount.

use crate::config::{self, Config};
use crate::fuse::{self, MountOptions};
use crate::vfs::CredFs;
use crate::vfs::namespace::Namespace;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

const REAP_INTERVAL: Duration = Duration::from_secs(30);

pub fn run(config_path: &Path, mountpoint: Option<PathBuf>) -> ExitCode {
    // Absolute, but symlinks kept: a reload must follow a swapped link.
    let config_path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.into());
    let config = match config::load(&config_path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("credfs: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let served = runtime.block_on(serve(config, mountpoint));
    // Blocking storage calls still running must not keep a stopping daemon.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            eprintln!("credfs: {message}");
            ExitCode::from(1)
        }
    }
}

async fn serve(config: Config, mountpoint: Option<PathBuf>) -> Result<(), String> {
    let mountpoint = mountpoint
        .or_else(|| config.mount.path.clone())
        .ok_or("no mount point: give MOUNTPOINT or set [mount] path")?;
    let shown = mountpoint.display().to_string();
    // Before mounting, so that a signal never finds the default action.
    let signal_stream = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
    let (mut interrupt, mut terminate, mut hangup) = (
        signal_stream(SignalKind::interrupt())?,
        signal_stream(SignalKind::terminate())?,
        signal_stream(SignalKind::hangup())?,
    );

    fuse::clean_stale_mount(&mountpoint).map_err(|e| format!("{shown}: {e}"))?;
    if fuse::is_credfs_mount(&mountpoint) {
        return Err(format!("{shown} is already served by a running credfs"));
    }
    std::fs::create_dir_all(&mountpoint).map_err(|e| format!("{shown}: {e}"))?;
    let options = MountOptions {
        allow_other: config.mount.allow_other,
    };
    let config_path = config.path.clone();
    let fs = Arc::new(CredFs::new(Namespace::build(config, None).await));
    let runtime = tokio::runtime::Handle::current();
    let mount_fs = fs.clone();
    let mount_point = mountpoint.clone();
    let mut mounted =
        tokio::task::spawn_blocking(move || fuse::mount(mount_fs, runtime, &mount_point, &options))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot mount {shown}: {e}"))?;
    info!(mountpoint = %shown, config = %config_path.display(), "mounted");
    notify_systemd("READY=1");

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
    let mut ended = mounted.ended();
    let ended_outside = loop {
        tokio::select! {
            _ = interrupt.recv() => break false,
            _ = terminate.recv() => break false,
            _ = &mut ended => break true,
            _ = hangup.recv() => reload(&fs, &config_path).await,
        }
    };
    reaper.abort();
    notify_systemd("STOPPING=1");
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

async fn reload(fs: &CredFs, path: &Path) {
    notify_systemd("RELOADING=1");
    match config::load(path) {
        Ok(config) => {
            fs.reload(config).await;
            info!(config = %path.display(), "config reloaded");
        }
        Err(errors) => {
            warn!("config reload refused, keeping the running config: {errors}");
            fs.record_error(format!("config reload refused: {errors}"));
        }
    }
    notify_systemd("READY=1");
}

/// Tells systemd (Type=notify) about our state when it started us.
fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = socket.to_string_lossy().into_owned();
    let sent =
        std::os::unix::net::UnixDatagram::unbound().and_then(|s| match socket.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
                s.send_to_addr(state.as_bytes(), &addr)
            }
            None => s.send_to(state.as_bytes(), &socket),
        });
    if let Err(e) = sent {
        warn!(error = %e, "cannot notify systemd");
    }
}
