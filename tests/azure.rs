//! Project archives in Azure Blob Storage (Azurite), written and read by
//! real tools, with the server's faults.

mod common;

use common::servers::{AZURE_KEY, Azurite};
use common::*;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

const CONTAINER: &str = "projects";

struct Setup {
    azurite: Azurite,
    daemon: Daemon,
    src: PathBuf,
}

fn start_with(key: &str, max_object_size: &str) -> Setup {
    let azurite = Azurite::start(&[CONTAINER]);
    let mut daemon = Daemon::prepare("");
    let config = format!(
        "[stores.az]\nprovider = \"azure\"\nconnection_string = \"{}\"\nbuckets = [\"{CONTAINER}\"]\nspool_dir = \"{}\"\nmax_object_size = \"{max_object_size}\"\n",
        azurite.connection_string(key),
        daemon.dir.path().join("spool").display()
    );
    fs::write(&daemon.config, config).unwrap();
    daemon.secret(key);
    daemon.spawn();
    let src = daemon.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    Setup {
        azurite,
        daemon,
        src,
    }
}

fn start_with_key(key: &str) -> Setup {
    start_with(key, "64MiB")
}

fn start() -> Setup {
    start_with_key(AZURE_KEY)
}

impl Setup {
    fn mounted(&self, name: &str) -> PathBuf {
        self.daemon.path(&format!("projects/{CONTAINER}/{name}"))
    }
}

#[test]
fn archives_round_trip_through_every_writer_and_reader() {
    let setup = start();
    for (size, name) in [
        (1000usize, "small"),
        ((5 << 20) - 1, "edge"),
        (20 << 20, "multi"),
    ] {
        let zip = make_zip(&setup.src, &format!("{name}.zip"), size);
        let writers = writer_commands(&zip, |tool| setup.mounted(&format!("{name}-{tool}.zip")));
        for (tool, script) in writers {
            let out = sh(&script);
            assert!(out.status.success(), "{script}: {}", stderr(&out));
            let mounted = setup.mounted(&format!("{name}-{tool}.zip"));
            assert_eq!(sha256(&mounted), sha256(&zip), "{script}");
            let cat = run("cat", &[&mounted.to_string_lossy()]);
            assert_eq!(cat.stdout, fs::read(&zip).unwrap(), "cat after {script}");
        }
    }
    zip_tree_into(&setup.src, &setup.mounted("zipped.zip"));
    let listing = run(
        "ls",
        &[
            "-l",
            &setup
                .daemon
                .path(&format!("projects/{CONTAINER}"))
                .to_string_lossy(),
        ],
    );
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    assert!(
        listing.contains("zipped.zip") && listing.contains("multi-cp.zip"),
        "{listing}"
    );
}

#[test]
fn bad_archives_renames_and_deletes() {
    let setup = start();
    let good = make_zip(&setup.src, "good.zip", 10_000);
    let target = setup.mounted("p.zip");
    assert!(cp(&good, &target).status.success());
    let junk = setup.src.join("junk");
    fs::write(&junk, vec![b'j'; 5000]).unwrap();
    let out = cp(&junk, &target);
    assert!(
        stderr(&out).contains("Invalid argument"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        sha256(&target),
        sha256(&good),
        "the previous blob is intact"
    );
    fs::rename(&target, setup.mounted("q.zip")).unwrap();
    assert_eq!(sha256(&setup.mounted("q.zip")), sha256(&good));
    assert_eq!(
        fs::metadata(&target).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    fs::remove_file(setup.mounted("q.zip")).unwrap();
    assert_eq!(
        fs::metadata(setup.mounted("q.zip"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
}

#[test]
fn a_wrong_key_is_eacces() {
    let wrong = "d3JvbmcgYXp1cmUga2V5IDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ=";
    let setup = start_with_key(wrong);
    let err = fs::read_dir(setup.daemon.path(&format!("projects/{CONTAINER}"))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
}

#[test]
fn the_service_down_gives_eio_and_recovers() {
    let mut setup = start();
    let zip = make_zip(&setup.src, "z.zip", 50_000);
    assert!(cp(&zip, &setup.mounted("z.zip")).status.success());
    setup.azurite.stop();
    let out = run(
        "cat",
        &[&setup
            .daemon
            .path(&format!("projects/{CONTAINER}/other.zip"))
            .to_string_lossy()],
    );
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
    let out = cp(&zip, &setup.mounted("new.zip"));
    assert!(
        !out.status.success(),
        "an upload with the service down fails"
    );
    setup.azurite.restart();
    setup.azurite.create_containers(&[CONTAINER]);
    let mounted = setup.mounted("again.zip");
    wait_for("uploads to work again", Duration::from_secs(30), || {
        cp(&zip, &mounted).status.success()
    });
    assert_eq!(sha256(&mounted), sha256(&zip), "and reads");
}

#[test]
fn sixteen_concurrent_uploads_and_downloads_stay_intact() {
    let setup = start();
    let archives: Vec<PathBuf> = (0..16)
        .map(|i| make_zip(&setup.src, &format!("c{i}.zip"), 500_000 + i * 1000))
        .collect();
    for (i, zip) in archives.iter().enumerate() {
        let out = cp(zip, &setup.mounted(&format!("down-{i}.zip")));
        assert!(out.status.success());
    }
    std::thread::scope(|scope| {
        for (i, zip) in archives.iter().enumerate() {
            let setup = &setup;
            scope.spawn(move || {
                let out = cp(zip, &setup.mounted(&format!("up-{i}.zip")));
                assert!(out.status.success(), "upload {i}: {}", stderr(&out));
            });
            scope.spawn(move || {
                assert_eq!(
                    sha256(&setup.mounted(&format!("down-{i}.zip"))),
                    sha256(zip),
                    "download {i}"
                );
            });
        }
    });
    for (i, zip) in archives.iter().enumerate() {
        assert_eq!(sha256(&setup.mounted(&format!("up-{i}.zip"))), sha256(zip));
    }
}

#[test]
fn blobs_of_edge_sizes_read_back_identical() {
    let setup = start();
    for size in [0usize, 1, (5 << 20) - 1, 5 << 20, (5 << 20) + 1] {
        let name = format!("raw-{size}.zip");
        let local = setup.src.join(&name);
        let out = sh(&format!(
            "head -c {size} /dev/urandom > {}",
            local.display()
        ));
        assert!(out.status.success());
        let script = format!(
            "from azure.storage.blob import BlobServiceClient\nc = BlobServiceClient.from_connection_string({:?}).get_container_client({CONTAINER:?})\nc.upload_blob({name:?}, open({:?}, 'rb').read())\n",
            setup.azurite.connection_string(AZURE_KEY),
            local.to_string_lossy()
        );
        let python = std::env::var("CREDFS_MOTO_PYTHON")
            .unwrap_or_else(|_| "/var/cache/credfs/venv/bin/python".into());
        let out = run(&python, &["-c", &script]);
        assert!(out.status.success(), "{}", stderr(&out));
        let mounted = setup.mounted(&name);
        assert_eq!(fs::metadata(&mounted).unwrap().len(), size as u64);
        assert_eq!(sha256(&mounted), sha256(&local), "size {size}");
    }
}

/// One handle reads one version: once the blob is replaced, a read that
/// needs a new GET fails with EIO (If-Match on the ETag seen at open)
/// instead of mixing in the new bytes; a fresh open reads the new blob.
#[test]
fn a_handle_never_mixes_two_versions_of_a_blob() {
    let setup = start();
    assert_one_version_per_handle(&setup.src, &setup.mounted("x.zip"));
}

/// A 1 GiB archive goes up in blocks staged in parallel while it is
/// written, and reads back identical, whole and at random offsets.
#[test]
fn a_one_gib_archive_round_trips() {
    let setup = start_with(AZURE_KEY, "2GiB");
    let zip = make_zip(&setup.src, "big.zip", 1 << 30);
    let target = setup.mounted("big.zip");
    let out = cp(&zip, &target);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256(&target), sha256(&zip));
    assert_eq!(random_reads(&target, &zip, 4, 40), "ok");
}
