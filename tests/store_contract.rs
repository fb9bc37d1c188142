//! What every store promises the layers above it, checked by one body run
//! against each store through the `ProjectStore` trait. A new store gets
//! the whole contract with one more `#[tokio::test]` at the end.

mod common;

use common::servers::{AZURE_KEY, Azurite, S3Server};
use credfs::error::{ErrorKind, Result};
use credfs::store::{MemoryStore, ObjectInfo, ProjectStore};
use std::path::Path;
use std::sync::Arc;

const BUCKET: &str = "contract";

/// Opens the one store of `toml` as the daemon would.
async fn open(dir: &Path, toml: &str) -> Arc<dyn ProjectStore> {
    let config = credfs::config::parse(&dir.join("credfs.toml"), toml)
        .unwrap_or_else(|e| panic!("the contract config is valid: {e}"));
    let store = config.stores.values().next().expect("one store");
    credfs::store::open_store(store)
        .await
        .expect("the store opens")
}

/// Everything a whole read of `name` returns.
async fn read(store: &dyn ProjectStore, name: &str) -> Result<Vec<u8>> {
    let reader = store.open(BUCKET, name).await?;
    let size = u32::try_from(reader.info().size).expect("a small object");
    reader.read_at(0, size).await
}

async fn commit(store: &dyn ProjectStore, name: &str, bytes: &[u8]) -> Result<ObjectInfo> {
    let mut upload = store.begin_upload(BUCKET, name).await?;
    upload.write_at(0, bytes.to_vec()).await?;
    upload.commit(name).await
}

async fn listed(store: &dyn ProjectStore) -> Vec<String> {
    let mut names: Vec<String> = store
        .list(BUCKET)
        .await
        .expect("list")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names
}

fn not_found<T>(outcome: Result<T>) -> bool {
    matches!(outcome, Err(e) if e.kind() == ErrorKind::NotFound)
}

async fn contract(store: Arc<dyn ProjectStore>) {
    let store = store.as_ref();
    nothing_is_there_before_a_commit(store).await;
    a_commit_is_what_stat_list_and_reads_see(store).await;
    the_last_commit_wins(store).await;
    rename_moves_and_replaces(store).await;
    delete_removes(store).await;
    only_archive_names_are_seen(store).await;
}

async fn nothing_is_there_before_a_commit(store: &dyn ProjectStore) {
    assert_eq!(store.stat(BUCKET, "missing.zip").await.expect("stat"), None);
    assert!(not_found(store.open(BUCKET, "missing.zip").await));
    let mut upload = store
        .begin_upload(BUCKET, "pending.zip")
        .await
        .expect("begin");
    upload
        .write_at(0, b"in flight".to_vec())
        .await
        .expect("write");
    assert_eq!(store.stat(BUCKET, "pending.zip").await.expect("stat"), None);
    assert!(!listed(store).await.contains(&"pending.zip".to_string()));
    upload.abort().await;
    assert_eq!(store.stat(BUCKET, "pending.zip").await.expect("stat"), None);
}

async fn a_commit_is_what_stat_list_and_reads_see(store: &dyn ProjectStore) {
    let mut upload = store.begin_upload(BUCKET, "a.zip").await.expect("begin");
    upload
        .write_at(0, b"hello world".to_vec())
        .await
        .expect("write");
    upload.set_len(5).await.expect("truncate");
    // Past the end: the gap reads as zeros.
    upload.write_at(7, b"XY".to_vec()).await.expect("write");
    let expected = b"hello\0\0XY".to_vec();
    assert_eq!(upload.size(), 9);
    assert_eq!(upload.read_at(3, 4).await.expect("read"), b"lo\0\0");
    let committed = upload.commit("a.zip").await.expect("commit");
    assert_eq!(committed.size, 9);
    let stat = store
        .stat(BUCKET, "a.zip")
        .await
        .expect("stat")
        .expect("there");
    assert_eq!(stat.size, 9);
    assert_eq!(listed(store).await, ["a.zip"]);
    let reader = store.open(BUCKET, "a.zip").await.expect("open");
    assert_eq!(reader.info().size, 9);
    assert_eq!(reader.read_at(2, 5).await.expect("read"), &expected[2..7]);
    assert_eq!(reader.read_at(0, 100).await.expect("read"), expected);
}

async fn the_last_commit_wins(store: &dyn ProjectStore) {
    let before = read(store, "a.zip").await.expect("read");
    let old_reader = store.open(BUCKET, "a.zip").await.expect("open");
    let (first, second) = (
        store.begin_upload(BUCKET, "a.zip").await,
        store.begin_upload(BUCKET, "a.zip").await,
    );
    let (mut first, mut second) = (first.expect("begin"), second.expect("begin"));
    first
        .write_at(0, b"first of two".to_vec())
        .await
        .expect("write");
    second.write_at(0, b"second".to_vec()).await.expect("write");
    first.commit("a.zip").await.expect("commit");
    second.commit("a.zip").await.expect("commit");
    assert_eq!(read(store, "a.zip").await.expect("read"), b"second");
    assert_eq!(
        store
            .stat(BUCKET, "a.zip")
            .await
            .expect("stat")
            .map(|i| i.size),
        Some(6)
    );
    // A handle opened before never mixes in the new bytes: it reads the
    // version it opened, or fails.
    if let Ok(bytes) = old_reader.read_at(0, 100).await {
        assert_eq!(bytes, before);
    }
}

async fn rename_moves_and_replaces(store: &dyn ProjectStore) {
    commit(store, "b.zip", b"bravo").await.expect("commit");
    let moved = store
        .rename(BUCKET, "b.zip", "c.zip")
        .await
        .expect("rename");
    assert_eq!(moved.size, 5);
    assert_eq!(store.stat(BUCKET, "b.zip").await.expect("stat"), None);
    assert_eq!(read(store, "c.zip").await.expect("read"), b"bravo");
    store
        .rename(BUCKET, "c.zip", "a.zip")
        .await
        .expect("replace");
    assert_eq!(read(store, "a.zip").await.expect("read"), b"bravo");
    assert_eq!(listed(store).await, ["a.zip"]);
}

async fn delete_removes(store: &dyn ProjectStore) {
    store.delete(BUCKET, "a.zip").await.expect("delete");
    assert_eq!(store.stat(BUCKET, "a.zip").await.expect("stat"), None);
    assert!(not_found(store.open(BUCKET, "a.zip").await));
    assert!(listed(store).await.is_empty());
}

async fn only_archive_names_are_seen(store: &dyn ProjectStore) {
    for name in [
        "notes.txt",
        "zi123456",
        "Bad Name.zip",
        ".hidden.zip",
        "a.ZIP",
    ] {
        // A store may refuse the name, or keep the object out of sight;
        // either way nothing shows it.
        let _ = commit(store, name, b"not an archive").await;
        assert_eq!(
            store.stat(BUCKET, name).await.expect("stat"),
            None,
            "{name}"
        );
        assert!(not_found(store.open(BUCKET, name).await), "{name}");
        assert!(listed(store).await.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn memory() {
    contract(Arc::new(MemoryStore::new([BUCKET]))).await;
}

#[tokio::test]
async fn filesystem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "[stores.fs]\nprovider = \"filesystem\"\nroot = \"{}\"\nbuckets = [\"{BUCKET}\"]\n",
        dir.path().join("store").display()
    );
    contract(open(dir.path(), &toml).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_on_s3s_fs() {
    let server = S3Server::start(&[BUCKET]);
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = server.store_config("s3", &[BUCKET], "", &dir.path().join("spool"));
    contract(open(dir.path(), &toml).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_on_azurite() {
    let azurite = Azurite::start(&[BUCKET]);
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "[stores.az]\nprovider = \"azure\"\nconnection_string = \"{}\"\nbuckets = [\"{BUCKET}\"]\nspool_dir = \"{}\"\n",
        azurite.connection_string(AZURE_KEY),
        dir.path().join("spool").display()
    );
    contract(open(dir.path(), &toml).await).await;
}
