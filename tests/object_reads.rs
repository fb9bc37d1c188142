//! Large archives read through the prefetching readers of the S3 and Azure
//! stores, on real servers: random offsets from several readers at once
//! compare equal to the source, and an archive replaced in the middle of a
//! read gives that handle EIO or the old bytes, never a mix.

mod common;

use common::servers::{AZURE_KEY, Azurite, S3_SECRET_KEY, S3Server};
use common::*;
use std::fs;
use std::path::{Path, PathBuf};

const BUCKET: &str = "archives";
/// Larger than a reader's whole window (8 ranges of 8 MiB).
const PAYLOAD: usize = 160 << 20;

/// A daemon serving one store of `config`, and a scratch directory.
fn daemon(store: &str, secret: &str) -> (Daemon, PathBuf) {
    let mut daemon = Daemon::prepare("");
    let state = daemon.dir.path().join("state");
    let store = store.replace("@DIR@", &daemon.dir.path().to_string_lossy());
    fs::write(&daemon.config, store).expect("config");
    daemon.secret(secret);
    daemon.spawn_with_env(&[
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("STATE_DIRECTORY", &state.to_string_lossy()),
    ]);
    let src = daemon.dir.path().join("src");
    fs::create_dir_all(&src).expect("src");
    (daemon, src)
}

fn on_s3() -> (S3Server, Daemon, PathBuf) {
    let server = S3Server::start(&[BUCKET]);
    let spool = Path::new("@DIR@/spool");
    let (daemon, src) = daemon(
        &server.store_config("s3", &[BUCKET], "", spool),
        S3_SECRET_KEY,
    );
    (server, daemon, src)
}

fn on_azure() -> (Azurite, Daemon, PathBuf) {
    let azurite = Azurite::start(&[BUCKET]);
    let store = format!(
        "[stores.az]\nprovider = \"azure\"\nconnection_string = \"{}\"\nbuckets = [\"{BUCKET}\"]\nspool_dir = \"@DIR@/spool\"\n",
        azurite.connection_string(AZURE_KEY)
    );
    let (daemon, src) = daemon(&store, AZURE_KEY);
    (azurite, daemon, src)
}

fn mounted(daemon: &Daemon, name: &str) -> PathBuf {
    daemon.path(&format!("projects/{BUCKET}/{name}"))
}

/// Uploads a new archive of `PAYLOAD` random bytes through the mount.
fn upload(daemon: &Daemon, src: &Path, name: &str) -> PathBuf {
    let zip = make_zip(src, name, PAYLOAD);
    let out = cp(&zip, &mounted(daemon, name));
    assert!(out.status.success(), "{}", stderr(&out));
    zip
}

fn random_reads_match(daemon: &Daemon, src: &Path) {
    let zip = upload(daemon, src, "big.zip");
    assert_eq!(
        random_reads(&mounted(daemon, "big.zip"), &zip, 4, 150),
        "ok"
    );
}

/// Replaced through the mount (a new upload to the name) while a handle
/// reads it.
fn replaced_during_a_read(daemon: &Daemon, src: &Path) {
    let old = upload(daemon, src, "moving.zip");
    let new = make_zip(src, "moving-new.zip", PAYLOAD);
    let target = mounted(daemon, "moving.zip");
    let seen = read_with_midway(&target, &old, || {
        let out = cp(&new, &target);
        assert!(out.status.success(), "{}", stderr(&out));
    });
    assert!(
        seen == "old bytes" || seen == format!("errno {}", libc::EIO),
        "{seen}"
    );
    assert_eq!(
        sha256(&target),
        sha256(&new),
        "a fresh open reads the new one"
    );
}

#[test]
fn random_offset_reads_of_a_large_s3_archive_match_its_source() {
    let (_server, daemon, src) = on_s3();
    random_reads_match(&daemon, &src);
}

#[test]
fn random_offset_reads_of_a_large_azure_archive_match_its_source() {
    let (_azurite, daemon, src) = on_azure();
    random_reads_match(&daemon, &src);
}

#[test]
fn an_s3_archive_replaced_during_a_read_gives_eio_or_the_old_bytes() {
    let (_server, daemon, src) = on_s3();
    replaced_during_a_read(&daemon, &src);
}

#[test]
fn an_azure_archive_replaced_during_a_read_gives_eio_or_the_old_bytes() {
    let (_azurite, daemon, src) = on_azure();
    replaced_during_a_read(&daemon, &src);
}

/// The S3 server dies while a handle is in the middle of a large archive,
/// with ranges in flight: the read fails with EIO, the daemon lives, and
/// once the server is back a new open reads the whole archive.
#[test]
fn an_s3_server_dying_mid_read_gives_eio_and_the_daemon_recovers() {
    let (mut server, daemon, src) = on_s3();
    let zip = upload(&daemon, &src, "cut.zip");
    let target = mounted(&daemon, "cut.zip");
    let seen = read_with_midway(&target, &zip, || server.stop());
    assert_eq!(seen, format!("errno {}", libc::EIO));
    assert!(
        fs::read_dir(daemon.path("projects")).is_ok(),
        "the daemon is alive"
    );
    server.restart();
    assert_eq!(sha256(&target), sha256(&zip));
}
