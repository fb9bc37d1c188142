//! Registries whose provider fails, and reloads.

use super::harness::*;
use credfs::error::{Error, ErrorKind};
use credfs::registry::faulty::RegistryOp;
use credfs::vfs::OpenFlags;

#[tokio::test]
async fn a_failing_registry_is_eio_at_open_and_a_refresh_recovers() {
    let core = Core::start().await;
    core.registry_faults
        .fail(RegistryOp::Fetch, .., Error::provider("injected: no token"));
    let password = "registries/open/password";
    // The entry exists: a lookup succeeds, the open reports the failure.
    let attr = core.lookup(password, OTHER).await.expect("lookup");
    let opened = core.fs.open(attr.ino, OpenFlags::default(), OTHER).await;
    assert_eq!(opened.map(|_| ()).map_err(|e| e.errno()), Err(libc::EIO));
    // What the config says needs no provider.
    let host = core.read_text("registries/open/registry", OTHER).await;
    assert_eq!(host, "open.example");
    // docker/config.json leaves out what it cannot get.
    let config = core.read_text("docker/config.json", OWNER).await;
    assert!(!config.contains("open.example"), "{config}");

    core.registry_faults.clear();
    core.refresh("open", OWNER).await.expect("refresh");
    assert_eq!(core.read_text(password, OTHER).await, OPEN_PASSWORD);
    let refreshes = core.audited("refresh");
    assert_eq!(refreshes.len(), 1);
    assert_eq!(refreshes[0].2, "ok");
}

#[tokio::test]
async fn a_refused_refresh_is_eio_and_audited() {
    let core = Core::start().await;
    core.registry_faults
        .fail(RegistryOp::Fetch, .., Error::provider("injected"));
    let written = core.refresh("open", OWNER).await;
    assert_eq!(kind(written), ErrorKind::Provider);
    assert_eq!(core.audited("refresh")[0].2, "EIO");
}

#[tokio::test]
async fn a_slow_provider_holds_only_its_own_readers() {
    let core = Core::start().await;
    let delay = std::time::Duration::from_millis(300);
    core.registry_faults.delay(RegistryOp::Fetch, 1..=1, delay);
    let started = std::time::Instant::now();
    // Both readers share the one call in flight.
    let (a, b) = tokio::join!(
        core.read("registries/open/password", OTHER),
        core.read("registries/open/username", OTHER),
    );
    assert!(started.elapsed() >= delay);
    assert_eq!(a.expect("password"), OPEN_PASSWORD.as_bytes());
    assert_eq!(b.expect("username"), b"open-user");
    assert_eq!(core.registry_faults.calls(RegistryOp::Fetch), 1);
}

#[tokio::test]
async fn a_reload_drops_removed_entries_and_serves_changed_ones() {
    let core = Core::start().await;
    let open = core
        .lookup("registries/open/password", OTHER)
        .await
        .expect("open");
    let secret = core.lookup("secrets/app/key", OWNER).await.expect("key");
    assert_eq!(core.read_text("secrets/app/key", OWNER).await, SECRET);

    let changed = without_sections(CONFIG, &["[registries.open]", "[stores.frozen]"])
        .replace("key = \"s3cret-value-77\"", "key = \"rotated-value-88\"");
    let config = core.config(&changed);
    core.fs.reload(config).await;

    assert_eq!(core.list("registries", OTHER).await.expect("ls"), ["team"]);
    assert_eq!(
        kind(core.lookup("registries/open", OTHER).await),
        ErrorKind::NotFound
    );
    let held = core.fs.getattr(open.ino, None, OTHER).await;
    assert_eq!(
        kind(held),
        ErrorKind::NotFound,
        "a number held across the reload"
    );
    assert_eq!(core.list("projects", OWNER).await.expect("ls"), ["b"]);
    assert_eq!(
        core.read_text("secrets/app/key", OWNER).await,
        "rotated-value-88"
    );
    let reopened = core.fs.open(secret.ino, OpenFlags::default(), OWNER).await;
    assert!(reopened.is_ok(), "the key's number still names it");
}

/// `text` without the tables that start with `headers` (tables are
/// separated by blank lines in the test config).
fn without_sections(text: &str, headers: &[&str]) -> String {
    text.split("\n\n")
        .filter(|table| !headers.iter().any(|h| table.trim_start().starts_with(h)))
        .collect::<Vec<_>>()
        .join("\n\n")
}
