//! `credfs mount`: load, mount, serve until a signal, unmount.

use crate::config::watch::ConfigWatcher;
use crate::config::{self, Config};
use crate::daemon::{self, Connection, Control};
use crate::fuse::handover;
use crate::vfs::Providers;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, warn};

pub fn run(config_path: &Path, mountpoint: Option<PathBuf>, takeover: bool) -> ExitCode {
    // Before any thread starts: it edits the environment.
    let inherited = handover::from_systemd();
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
    let connection = match (inherited, takeover) {
        (Some(inherited), _) => Ok(Connection::Inherited(inherited)),
        (None, false) => Ok(Connection::Mount),
        (None, true) => runtime.block_on(take_over(&config, mountpoint.as_deref())),
    };
    let served = match connection {
        Ok(connection) => runtime.block_on(serve(config, watcher, mountpoint, connection)),
        Err(message) => Err(message),
    };
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

/// Asks the daemon serving the mount point for its live connection.
async fn take_over(config: &Config, mountpoint: Option<&Path>) -> Result<Connection, String> {
    let mountpoint = mountpoint
        .or(config.mount.path.as_deref())
        .ok_or("no mount point: give MOUNTPOINT or set [mount] path")?;
    let (inherited, successor) = handover::request(mountpoint)
        .await
        .map_err(|e| format!("cannot take {} over: {e}", mountpoint.display()))?;
    Ok(Connection::TakenOver(inherited, successor))
}

/// Turns SIGINT and SIGTERM into a stop, SIGHUP into a reopen and SIGUSR2
/// into a restart in place, then serves until the daemon returns.
async fn serve(
    config: Config,
    watcher: Option<ConfigWatcher>,
    mountpoint: Option<PathBuf>,
    connection: Connection,
) -> Result<(), String> {
    // Before mounting, so that a signal never finds the default action.
    let signal_stream = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
    let (mut interrupt, mut terminate, mut hangup, mut restart) = (
        signal_stream(SignalKind::interrupt())?,
        signal_stream(SignalKind::terminate())?,
        signal_stream(SignalKind::hangup())?,
        signal_stream(SignalKind::user_defined2())?,
    );
    let (control, received) = tokio::sync::mpsc::channel(4);
    let forward = tokio::spawn(async move {
        loop {
            let command = tokio::select! {
                _ = interrupt.recv() => Control::Stop,
                _ = terminate.recv() => Control::Stop,
                _ = hangup.recv() => Control::Reopen,
                _ = restart.recv() => Control::Restart,
            };
            if control.send(command).await.is_err() {
                return;
            }
        }
    });
    let served = daemon::run(
        config,
        watcher,
        mountpoint,
        Providers::real(),
        received,
        connection,
    )
    .await;
    forward.abort();
    served
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
/// measured 32 -> 97 MiB with the default, 32 -> 55 MiB with two). Blocks
/// of 4 MiB and more (the range buffers of a reader's window) are mapped
/// on their own and unmapped when freed: with glibc's sliding threshold
/// they would come from the arenas after the first was freed, and a 1 GiB
/// read left 157 MiB behind instead of its 64 MiB window. Setting that
/// threshold also fixes the trim threshold at 128 KiB: every free of a
/// 1 MiB request buffer at the top of the heap then shrank it (a TLB
/// shootdown on every core) and the next one faulted its pages back in,
/// the largest cost of a FUSE write stream. Up to 8 MiB free at the top
/// stays; idle uploads still return everything (`malloc_trim`). Set before
/// any thread starts.
fn keep_memory_bounded() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}
