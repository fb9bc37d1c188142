//! `credfs mount`: load, mount, serve until a signal, unmount.

use super::systemd;
use crate::config::watch::ConfigWatcher;
use crate::config::{self, Config};
use crate::fuse::{self, MountOptions};
use crate::vfs::namespace::Namespace;
use crate::vfs::{CredFs, Providers};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

const REAP_INTERVAL: Duration = Duration::from_secs(30);

pub fn run(config_path: &Path, mountpoint: Option<PathBuf>) -> ExitCode {
    keep_memory_private();
    keep_memory_bounded();
    // Absolute, but symlinks kept: a reload must follow a swapped link.
    let config_path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.into());
    // Watching starts before the first read, so an edit made while the
    // daemon starts is never taken for the state already loaded.
    let mut watcher = ConfigWatcher::new(vec![config_path.clone()])
        .map_err(|e| warn!(error = %e, "cannot watch the config; it reloads on SIGHUP only"))
        .ok();
    let (loaded, sources) = config::load_watched(&config_path);
    let config = match loaded {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    let names_secret_files = sources.len() > 1;
    if let Some(watcher) = watcher.as_mut() {
        watcher.set_files(sources);
    }
    // A secret file rotated between its first read and its watch: read
    // everything once more, now that changes are seen.
    let config = match (names_secret_files, &watcher) {
        (true, Some(_)) => config::load(&config_path).unwrap_or(config),
        _ => config,
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
    let served = runtime.block_on(serve(config, watcher, mountpoint));
    // Blocking storage calls still running must not keep a stopping daemon.
    runtime.shutdown_timeout(Duration::from_secs(2));
    crate::store::release();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            eprintln!("credfs: {message}");
            ExitCode::from(1)
        }
    }
}

async fn serve(
    config: Config,
    mut watcher: Option<ConfigWatcher>,
    mountpoint: Option<PathBuf>,
) -> Result<(), String> {
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
    let providers = Providers::real();
    let namespace = Namespace::build(config, None, &providers).await;
    let fs = Arc::new(CredFs::new(namespace, providers));
    fs.apply_audit(&fs.namespace().config)?;
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
            _ = interrupt.recv() => break false,
            _ = terminate.recv() => break false,
            _ = &mut ended => break true,
            _ = hangup.recv() => {
                info!("SIGHUP: reopening the audit log and reloading the config");
                fs.audit.reopen();
                reload(&fs, &config_path, watcher.as_mut()).await;
            }
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

/// No core file and no /proc/PID/mem for anyone but root with
/// CAP_SYS_PTRACE: the daemon's memory holds every credential it serves.
fn keep_memory_private() {
    // SAFETY: plain syscalls on the calling process with constant arguments.
    let (dumpable, core) = unsafe {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        (
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
            libc::setrlimit(libc::RLIMIT_CORE, &no_core),
        )
    };
    if dumpable != 0 || core != 0 {
        warn!(error = %std::io::Error::last_os_error(), "cannot keep the daemon from dumping core");
    }
}

/// glibc gives each busy thread a malloc arena of its own (up to eight per
/// core) and keeps what was freed in each: a burst of uploads across the
/// tokio and blocking-pool threads sets the daemon's RSS for good (a soak
/// measured 32 -> 97 MiB with the default, 32 -> 55 MiB with two). Set
/// before any thread starts.
fn keep_memory_bounded() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
