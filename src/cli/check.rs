//! `credfs check`: validate a config, and with `--probe` try each entry once.

use crate::config::{self, Config};
use crate::error::Error;
use crate::registry::{self, probe::Login};
use std::path::Path;
use std::process::ExitCode;

pub fn run(path: &Path, probe: bool) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    println!(
        "{}: ok ({} registries, {} stores, {} secret groups)",
        path.display(),
        config.registries.len(),
        config.stores.len(),
        config.secrets.len()
    );
    if !probe {
        return ExitCode::SUCCESS;
    }
    let healthy = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(probe_all(&config)),
        Err(e) => {
            eprintln!("credfs: cannot start the runtime: {e}");
            false
        }
    };
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Prints ok or the error for each entry; never a value.
async fn probe_all(config: &Config) -> bool {
    // The daemon's providers, through the same seam the daemon uses.
    let providers = crate::vfs::Providers::real();
    let mut healthy = true;
    let mut report = |what: String, result: Result<(), crate::error::Error>| match result {
        Ok(()) => println!("{what}: ok"),
        Err(e) => {
            healthy = false;
            println!("{what}: error: {e}");
        }
    };
    for (name, registry) in &config.registries {
        let fetched = providers.registry(&registry.provider).fetch(false).await;
        let what = format!("registry {name}");
        let credential = match fetched {
            Ok(credential) => credential,
            Err(e) => {
                report(what, Err(e));
                continue;
            }
        };
        if !credential.has_secret() {
            println!("{what}: ok (no credential needed)");
            continue;
        }
        let login = tokio::task::spawn_blocking(move || registry::probe::login(&credential)).await;
        match login {
            Ok(Login::Accepted(how)) => println!("{what}: ok ({how})"),
            Ok(Login::Unreachable(why)) => {
                println!("{what}: ok (fetched; login not tried, unreachable: {why})")
            }
            Ok(Login::Refused(why)) => report(what, Err(Error::denied(why))),
            Err(e) => report(what, Err(Error::provider(e.to_string()))),
        }
    }
    for (name, store_config) in &config.stores {
        match providers.open_store(store_config).await {
            Ok(store) => {
                for bucket in &store_config.buckets {
                    let listed = store.list(bucket).await.map(|_| ());
                    report(format!("store {name} bucket {bucket}"), listed);
                }
            }
            Err(e) => report(format!("store {name}"), Err(e)),
        }
    }
    healthy
}
