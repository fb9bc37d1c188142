//! A small executable for the credential-helper protocols only; symlink it
//! as `registry-credentials`, `docker-credential-credfs` or
//! `credfs-kubelet-provider`. It links none of
//! the daemon, so it starts in a fraction of credfs's time.

fn main() -> std::process::ExitCode {
    let args = match credfs::helper_protocols::utf8_args() {
        Ok(args) => args,
        Err(usage) => return usage,
    };
    credfs::helper_protocols::dispatch_by_name(&args).unwrap_or_else(|| {
        eprintln!(
            "credfs-helper: run me as registry-credentials, docker-credential-credfs or credfs-kubelet-provider (a symlink)"
        );
        std::process::ExitCode::from(2)
    })
}
