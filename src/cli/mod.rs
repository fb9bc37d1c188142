//! The `credfs` command line.

mod check;
mod mount;
mod status;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "credfs",
    version,
    about = "A filesystem of registry tokens, project archives and secrets"
)]
pub struct Cli {
    /// Log level or filter (error, warn, info, debug, trace); overrides CREDFS_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount the tree in the foreground until SIGINT or SIGTERM.
    Mount {
        /// Config file [default: $CREDFS_CONFIG, else /etc/credfs/credfs.toml]
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to mount; overrides [mount] path.
        mountpoint: Option<PathBuf>,
        /// Take the live mount over from the daemon serving it (an upgrade
        /// without systemd): it leaves once this one is ready.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a config file; exit 1 with file:line:col: message on error.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also fetch each credential and list each bucket once.
        #[arg(long)]
        probe: bool,
    },
    /// Print {"username","password"} for the registry serving IMAGE
    /// (thin-edge's registry-credentials protocol).
    Get {
        image: String,
        /// Fetch a new credential first.
        #[arg(long)]
        refresh: bool,
        /// The mounted tree [default: $CREDFS_MOUNT, else /run/credfs]
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Docker's credential-helper protocol (get, list) over the mounted tree;
    /// also run as `docker-credential-credfs ACTION`.
    DockerCredential {
        action: String,
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// The kubelet's image credential provider plugin: one
    /// CredentialProviderRequest on stdin, one response on stdout; also run
    /// as `credfs-kubelet-provider`.
    KubeletCredentialProvider {
        #[arg(long)]
        mount: Option<PathBuf>,
    },
    /// Summarise status.json of a mounted tree.
    Status {
        /// The mount point [default: $CREDFS_MOUNT, else /run/credfs]
        mountpoint: Option<PathBuf>,
    },
}

fn config_path(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("CREDFS_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG_PATH))
}

fn init_logging(level: Option<&str>) {
    let filter = level
        .map(tracing_subscriber::EnvFilter::new)
        .or_else(|| tracing_subscriber::EnvFilter::try_from_env("CREDFS_LOG").ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    // Under systemd, stderr goes to the journal, which stamps each line.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// A panic is logged wherever it happens. On a tokio worker the task's
/// request is answered EIO (its reply is dropped) and the daemon goes on.
/// On a FUSE session thread nothing would answer the kernel again: the
/// process exits non-zero so that systemd restarts it, and the new daemon
/// detaches the dead mount.
fn report_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(thread = name, location, "panic: {}", panic_message(info));
        if name.starts_with("fuser") || name == "fuse-session" {
            default(info);
            eprintln!(
                "credfs: a FUSE session thread panicked; exiting so that the service restarts"
            );
            std::process::exit(70);
        }
    }));
}

fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

pub fn main() -> ExitCode {
    report_panics();
    // Under a helper's name (a symlink to credfs) credfs speaks that
    // helper's protocol.
    let args = match crate::helper_protocols::utf8_args() {
        Ok(args) => args,
        Err(usage) => return usage,
    };
    if let Some(code) = crate::helper_protocols::dispatch_by_name(&args) {
        return code;
    }
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    match cli.command {
        Command::Mount {
            config,
            mountpoint,
            takeover,
        } => mount::run(&config_path(config), mountpoint, takeover),
        Command::Check { config, probe } => check::run(&config_path(config), probe),
        Command::Status { mountpoint } => status::run(mountpoint),
        Command::Get {
            image,
            refresh,
            mount,
        } => crate::helper_protocols::thin_edge(
            &image,
            refresh,
            &crate::helper_protocols::mountpoint(mount),
        ),
        Command::DockerCredential { action, mount } => {
            crate::helper_protocols::docker(&action, &crate::helper_protocols::mountpoint(mount))
        }
        Command::KubeletCredentialProvider { mount } => {
            crate::helper_protocols::kubelet(&crate::helper_protocols::mountpoint(mount))
        }
    }
}
