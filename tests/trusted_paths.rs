//! Nothing credfs trusts may be writable by another user (sshd's
//! StrictModes): the spool and store directories, the config, the secret
//! files and helper programs it names, and every directory above them.
//! A refusal names the path and points at the key, in `credfs check`, at
//! `credfs mount` and on reload; the stores never follow a planted link.

mod common;

use common::servers::S3Server;
use common::*;
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// A private scratch directory (0700 under sticky /tmp) with a config in it.
struct Scratch {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Scratch {
    fn new(config: &str) -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        let scratch = Scratch {
            config: dir.path().join("config.toml"),
            dir,
        };
        scratch.write_config(config);
        scratch
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn write_config(&self, text: &str) {
        let text = text.replace("@DIR@", &self.dir.path().to_string_lossy());
        fs::write(&self.config, text).expect("config");
        chmod(&self.config, 0o600);
    }

    fn mkdir(&self, relative: &str) -> PathBuf {
        let path = self.path(relative);
        fs::create_dir_all(&path).expect("mkdir");
        chmod(&path, 0o755);
        path
    }

    /// `credfs check` with `env` added: (exit code, stderr).
    fn check(&self, env: &[(&str, &str)]) -> (Option<i32>, String) {
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&self.config)
            .envs(env.iter().copied())
            .output()
            .expect("credfs check");
        (out.status.code(), stderr(&out))
    }

    fn assert_passes(&self, env: &[(&str, &str)]) {
        let (code, err) = self.check(env);
        assert_eq!(code, Some(0), "{err}");
    }

    /// `credfs check` exits 1 with exactly `file:location: message`
    /// (`@DIR@` in the message is the scratch directory).
    fn assert_refused(&self, env: &[(&str, &str)], location: &str, message: &str) {
        let (code, err) = self.check(env);
        let message = message.replace("@DIR@", &self.dir.path().to_string_lossy());
        let expected = format!("{}:{location}: {message}", self.config.display());
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.lines().any(|line| line == expected),
            "expected {expected:?} in {err:?}"
        );
    }
}

/// An S3 store whose spool is `@DIR@/<spool>` (line 7, column 13), or the
/// default one (an error about it points at `provider`, 2:12).
fn s3_config(spool: Option<&str>) -> String {
    let mut text = "[stores.s3]\nprovider = \"s3\"\nendpoint_url = \"http://127.0.0.1:9\"\naccess_key_id = \"a\"\nsecret_access_key = \"s\"\nbuckets = [\"b\"]\n".to_string();
    if let Some(spool) = spool {
        text += &format!("spool_dir = \"@DIR@/{spool}\"\n");
    }
    text
}

/// A filesystem store at `@DIR@/<root>` (root: 3:8; bucket `b`: 4:12).
fn disk_config(root: &str) -> String {
    format!(
        "[stores.disk]\nprovider = \"filesystem\"\nroot = \"@DIR@/{root}\"\nbuckets = [\"b\"]\n"
    )
}

const OTHERS: &str = "not by root or the daemon's uid 0";

#[test]
fn a_symlinked_spool_directory_is_refused() {
    let scratch = Scratch::new(&s3_config(Some("spool")));
    scratch.mkdir("real");
    symlink(scratch.path("real"), scratch.path("spool")).expect("symlink");
    scratch.assert_refused(&[], "7:13", "spool directory @DIR@/spool is a symlink");
}

#[test]
fn a_spool_directory_writable_by_group_or_owned_by_another_user_is_refused() {
    let scratch = Scratch::new(&s3_config(Some("spool")));
    let spool = scratch.mkdir("spool");
    scratch.assert_passes(&[]);
    chmod(&spool, 0o775);
    scratch.assert_refused(
        &[],
        "7:13",
        "spool directory @DIR@/spool is writable by group (mode 0775)",
    );
    chmod(&spool, 0o700);
    chown(&spool, Some(1000), Some(1000)).expect("chown");
    scratch.assert_refused(
        &[],
        "7:13",
        &format!("spool directory @DIR@/spool is owned by uid 1000, {OTHERS}"),
    );
}

#[test]
fn each_parent_of_the_spool_is_checked_and_a_sticky_one_is_fine() {
    let scratch = Scratch::new(&s3_config(Some("shared/spool")));
    let shared = scratch.mkdir("shared");
    let spool = scratch.mkdir("shared/spool");
    chmod(&shared, 0o777);
    scratch.assert_refused(
        &[],
        "7:13",
        "spool directory @DIR@/shared/spool: @DIR@/shared is writable by group and others (mode 0777)",
    );
    // Like /tmp: nobody else can replace what root owns in it...
    chmod(&shared, 0o1777);
    scratch.assert_passes(&[]);
    // ...but what another user owns there is theirs to swap.
    chown(&spool, Some(1000), Some(1000)).expect("chown");
    scratch.assert_refused(
        &[],
        "7:13",
        &format!("spool directory @DIR@/shared/spool is owned by uid 1000, {OTHERS}"),
    );
}

#[test]
fn the_default_spool_lives_in_the_state_directory_and_is_checked_there() {
    let scratch = Scratch::new(&s3_config(None));
    let state = scratch.path("state").to_string_lossy().into_owned();
    let env = [("STATE_DIRECTORY", state.as_str())];
    // `check` looks and makes nothing.
    scratch.assert_passes(&env);
    assert!(!scratch.path("state").exists());
    let made = scratch.mkdir("state");
    chmod(&made, 0o770);
    scratch.assert_refused(
        &env,
        "2:12",
        "spool directory @DIR@/state/spool: @DIR@/state is writable by group (mode 0770)",
    );
}

/// The daemon makes its missing state and spool directories, mode 0700.
#[test]
fn the_daemon_makes_the_default_spool_private() {
    let mut daemon = Daemon::prepare("");
    fs::write(
        &daemon.config,
        s3_config(None).replace("@DIR@", &daemon.dir.path().to_string_lossy()),
    )
    .expect("config");
    let state = daemon.dir.path().join("state");
    daemon.spawn_with_env(&[
        ("STATE_DIRECTORY", &state.to_string_lossy()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    assert!(state.join("spool").is_dir());
    assert_eq!(mode_of(&state), 0o700);
    assert_eq!(mode_of(&state.join("spool")), 0o700);
}

#[test]
fn a_symlinked_or_foreign_store_root_or_bucket_is_refused() {
    let scratch = Scratch::new(&disk_config("store"));
    scratch.mkdir("real");
    symlink(scratch.path("real"), scratch.path("store")).expect("symlink");
    scratch.assert_refused(&[], "3:8", "store root @DIR@/store is a symlink");

    fs::remove_file(scratch.path("store")).expect("unlink");
    let store = scratch.mkdir("store");
    chown(&store, Some(1000), Some(1000)).expect("chown");
    scratch.assert_refused(
        &[],
        "3:8",
        &format!("store root @DIR@/store is owned by uid 1000, {OTHERS}"),
    );

    chown(&store, Some(0), Some(0)).expect("chown");
    symlink("/etc", store.join("b")).expect("symlink");
    scratch.assert_refused(&[], "4:12", "bucket directory @DIR@/store/b is a symlink");
}

#[test]
fn a_config_in_a_directory_another_user_owns_is_refused() {
    let scratch = Scratch::new("");
    let conf = scratch.mkdir("conf");
    let config = conf.join("credfs.toml");
    fs::write(&config, "[secrets.g]\nk = \"v\"\n").expect("config");
    chmod(&config, 0o600);
    chown(&conf, Some(1000), Some(1000)).expect("chown");
    let out = run(BIN, &["check", "--config", &config.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "{path}:1:1: config file {path}: {dir} is owned by uid 1000, {OTHERS}; it can name programs credfs runs",
        path = config.display(),
        dir = conf.display()
    );
    assert_eq!(stderr(&out).trim_end(), expected);

    // The same through a link in a trusted place: the walk goes through it.
    chown(&conf, Some(0), Some(0)).expect("chown");
    chmod(&conf, 0o775);
    let link = scratch.path("credfs.toml");
    symlink(&config, &link).expect("symlink");
    let out = run(BIN, &["check", "--config", &link.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "{} is writable by group (mode 0775)",
            conf.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_world_writable_secret_file_is_refused() {
    let scratch = Scratch::new("[secrets.g]\nk = { file = \"@DIR@/secret\" }\n");
    fs::write(scratch.path("secret"), "s3cr3t-value\n").expect("secret");
    chmod(&scratch.path("secret"), 0o600);
    scratch.assert_passes(&[]);
    chmod(&scratch.path("secret"), 0o606);
    scratch.assert_refused(
        &[],
        "2:5",
        "secret file @DIR@/secret is writable by others (mode 0606)",
    );
    let (_, err) = scratch.check(&[]);
    assert!(!err.contains("s3cr3t-value"));
}

#[test]
fn a_group_writable_helper_program_or_directory_is_refused() {
    let scratch = Scratch::new(
        "[registries.h]\nprovider = \"helper\"\nregistry = \"ghcr.io/org\"\ncommand = [\"@DIR@/bin/helper\", \"get\"]\n",
    );
    let bin = scratch.mkdir("bin");
    // Not there yet: only root could put it in a trusted directory.
    scratch.assert_passes(&[]);
    let helper = bin.join("helper");
    fs::write(&helper, "#!/bin/sh\necho '{}'\n").expect("helper");
    chmod(&helper, 0o775);
    scratch.assert_refused(
        &[],
        "4:11",
        "helper program @DIR@/bin/helper is writable by group (mode 0775)",
    );
    chmod(&helper, 0o755);
    scratch.assert_passes(&[]);
    chown(&bin, Some(1000), Some(1000)).expect("chown");
    scratch.assert_refused(
        &[],
        "4:11",
        &format!("helper program @DIR@/bin/helper: @DIR@/bin is owned by uid 1000, {OTHERS}"),
    );
}

/// A helper that does not exist yet passes only where nobody but root could
/// create it: a sticky world-writable directory lets anyone plant it.
#[test]
fn a_missing_helper_under_a_directory_others_may_write_is_refused() {
    let scratch = Scratch::new(
        "[registries.h]\nprovider = \"helper\"\nregistry = \"ghcr.io/org\"\ncommand = [\"@DIR@/drop/h/helper\", \"get\"]\n",
    );
    let drop = scratch.mkdir("drop");
    chmod(&drop, 0o1777);
    scratch.assert_refused(
        &[],
        "4:11",
        "helper program @DIR@/drop/h/helper: @DIR@/drop is writable by group and others (mode 1777)",
    );
    chmod(&drop, 0o755);
    scratch.assert_passes(&[]);
}

/// The helper is checked again each time it runs: one made writable by
/// others after the config was loaded is not run.
#[test]
fn a_helper_is_checked_again_before_each_run() {
    let mut daemon = Daemon::prepare("");
    let bin = daemon.dir.path().join("bin");
    fs::create_dir_all(&bin).expect("bin");
    let helper = bin.join("helper");
    let ran = daemon.dir.path().join("ran");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\ntouch {}\necho '{{\"username\":\"u\",\"password\":\"trust-helper-pass-8c9d\"}}'\n",
            ran.display()
        ),
    )
    .expect("helper");
    chmod(&helper, 0o755);
    fs::write(
        &daemon.config,
        format!(
            "[registries.h]\nprovider = \"helper\"\nregistry = \"h.example\"\ncommand = [\"{}\"]\n",
            helper.display()
        ),
    )
    .expect("config");
    daemon.secret("trust-helper-pass-8c9d");
    daemon.spawn();
    chmod(&bin, 0o777);
    let out = run(
        "cat",
        &[&daemon.path("registries/h/token").to_string_lossy()],
    );
    assert!(out.stdout.is_empty(), "an untrusted helper ran");
    assert!(!ran.exists(), "the helper was not started");
    let status = fs::read_to_string(daemon.path("status.json")).expect("status");
    assert!(
        status.contains("is writable by group and others"),
        "status.json says why: {status}"
    );
}

#[test]
fn mount_refuses_an_untrusted_store_root_before_mounting() {
    let scratch = Scratch::new(&disk_config("store"));
    let store = scratch.mkdir("store");
    chmod(&store, 0o775);
    let mnt = scratch.mkdir("mnt");
    let out = run(
        BIN,
        &[
            "mount",
            "--config",
            &scratch.config.to_string_lossy(),
            &mnt.to_string_lossy(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "{}:3:8: store root {} is writable by group (mode 0775)",
        scratch.config.display(),
        store.display()
    );
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    assert!(!is_mounted(&mnt));
}

#[test]
fn a_reload_naming_a_symlinked_store_root_is_refused_and_the_old_config_serves() {
    let mut daemon = Daemon::start(
        "[stores.disk]\nprovider = \"filesystem\"\nroot = \"@DIR@/store\"\nbuckets = [\"b\"]\n",
    );
    let dir = daemon.dir.path().to_path_buf();
    fs::create_dir_all(dir.join("elsewhere")).expect("mkdir");
    symlink(dir.join("elsewhere"), dir.join("linked")).expect("symlink");
    let edited = format!(
        "[stores.disk]\nprovider = \"filesystem\"\nroot = \"{d}/store\"\nbuckets = [\"b\"]\n[stores.two]\nprovider = \"filesystem\"\nroot = \"{d}/linked\"\nbuckets = [\"c\"]\n",
        d = dir.display()
    );
    fs::write(&daemon.config, edited).expect("edit");
    let expected = format!(
        "{}:7:8: store root {}/linked is a symlink",
        daemon.config.display(),
        dir.display()
    );
    let status = daemon.path("status.json");
    wait_for(
        "the refusal in status.json",
        Duration::from_secs(10),
        || fs::read_to_string(&status).is_ok_and(|s| s.contains(&expected)),
    );
    let buckets: Vec<String> = fs::read_dir(daemon.path("projects"))
        .expect("projects")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(buckets, ["b"]);
    assert!(daemon.log().contains(&expected), "{}", daemon.log());
    daemon.stop();
}

#[test]
fn a_planted_symlink_in_a_store_is_never_served() {
    let mut daemon = Daemon::prepare(&disk_config("store"));
    let bucket = daemon.store().join("b");
    fs::create_dir_all(&bucket).expect("bucket");
    let src = daemon.dir.path().join("src");
    fs::create_dir_all(&src).expect("src");
    fs::copy(make_zip(&src, "good.zip", 1000), bucket.join("good.zip")).expect("copy");
    symlink("/etc/shadow", bucket.join("x.zip")).expect("plant");
    symlink("good.zip", bucket.join("alias.zip")).expect("plant");
    daemon.spawn();
    symlink("/etc/shadow", bucket.join("late.zip")).expect("plant after start");

    let listed: Vec<String> = fs::read_dir(daemon.path("projects/b"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, ["good.zip"]);
    for name in ["x.zip", "alias.zip", "late.zip"] {
        let path = daemon.path(&format!("projects/b/{name}"));
        let out = run("cat", &[&path.to_string_lossy()]);
        assert!(!out.status.success(), "{name} was served");
        assert!(out.stdout.is_empty());
        assert_eq!(open_errno(&path, "os.O_RDONLY"), libc::ENOENT, "{name}");
        assert!(fs::metadata(&path).is_err(), "{name} has attributes");
    }
    let shadow = sha256(Path::new("/etc/shadow"));
    let out = run("rm", &[&daemon.path("projects/b/x.zip").to_string_lossy()]);
    assert!(!out.status.success(), "rm of a link that is no archive");
    assert!(bucket.join("x.zip").symlink_metadata().is_ok());
    // An upload to that name replaces the link, not what it points at.
    let out = cp(&src.join("good.zip"), &daemon.path("projects/b/x.zip"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        bucket
            .join("x.zip")
            .symlink_metadata()
            .expect("stored")
            .is_file()
    );
    assert_eq!(
        sha256(&daemon.path("projects/b/x.zip")),
        sha256(&src.join("good.zip"))
    );
    assert_eq!(sha256(Path::new("/etc/shadow")), shadow);
    daemon.stop();
}

/// A bucket directory swapped for a link after start: the daemon keeps
/// the directory it checked and never follows the link.
#[test]
fn a_bucket_directory_swapped_for_a_symlink_is_not_followed() {
    let mut daemon = Daemon::prepare(&disk_config("store"));
    let bucket = daemon.store().join("b");
    fs::create_dir_all(&bucket).expect("bucket");
    let src = daemon.dir.path().join("src");
    fs::create_dir_all(&src).expect("src");
    fs::copy(make_zip(&src, "a.zip", 1000), bucket.join("a.zip")).expect("copy");
    daemon.spawn();
    let elsewhere = daemon.dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).expect("mkdir");
    fs::copy(src.join("a.zip"), elsewhere.join("other.zip")).expect("copy");
    fs::rename(&bucket, daemon.store().join("b-moved")).expect("move");
    symlink(&elsewhere, &bucket).expect("symlink");

    let out = cp(&src.join("a.zip"), &daemon.path("projects/b/new.zip"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(daemon.store().join("b-moved/new.zip").is_file());
    assert!(!elsewhere.join("new.zip").exists());
    let out = run(
        "cat",
        &[&daemon.path("projects/b/other.zip").to_string_lossy()],
    );
    assert!(!out.status.success(), "served through the link");
    daemon.stop();
}

/// The upload body is read from the spool descriptor that was written and
/// checked: a file put at the spool's name before commit is never sent.
#[test]
fn an_upload_is_sent_from_the_checked_descriptor_not_by_name() {
    let server = S3Server::start(&["projects"]);
    let mut daemon = Daemon::prepare("");
    let spool = daemon.dir.path().join("spool");
    let config = server.store_config("s3", &["projects"], "part_size = \"5MiB\"", &spool);
    fs::write(&daemon.config, config).expect("config");
    daemon.secret(common::servers::S3_SECRET_KEY);
    daemon.spawn_with_env(&[("AWS_EC2_METADATA_DISABLED", "true")]);
    let src = daemon.dir.path().join("src");
    fs::create_dir_all(&src).expect("src");
    let zip = make_zip(&src, "big.zip", 12 << 20);
    let staging = daemon.path("projects/projects/stage1");
    let script = format!(
        "import glob, os\n\
         data = open({zip:?}, 'rb').read()\n\
         f = os.open({staging:?}, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)\n\
         os.write(f, data)\n\
         [name] = glob.glob({spool:?} + '/.credfs-instance-*/.credfs-upload-*')\n\
         os.rename(name, name + '.moved')\n\
         with open(name, 'wb') as impostor: impostor.write(b'X' * len(data))\n\
         os.close(f)\n\
         os.rename({staging:?}, {target:?})\n",
        zip = zip.to_string_lossy(),
        staging = staging.to_string_lossy(),
        spool = spool.to_string_lossy(),
        target = daemon.path("projects/projects/x.zip").to_string_lossy(),
    );
    let out = run("python3", &["-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256(&server.object("projects", "x.zip")), sha256(&zip));
    daemon.stop();
}

/// Unmounts a scratch mount even when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = run("umount", &[&self.0.to_string_lossy()]);
    }
}

/// A Kubernetes ConfigMap volume is a 0777 directory on a read-only mount:
/// its write bits grant nobody anything, so it is trusted; the same
/// directory writable is not.
#[test]
fn a_world_writable_directory_on_a_read_only_mount_is_trusted() {
    require_program("mount");
    let scratch = Scratch::new("");
    let volume = scratch.mkdir("volume");
    let out = run(
        "mount",
        &["-t", "tmpfs", "tmpfs", &volume.to_string_lossy()],
    );
    assert!(out.status.success(), "mount: {}", stderr(&out));
    let _mounted = Mounted(volume.clone());
    chmod(&volume, 0o777);
    let config = volume.join("credfs.toml");
    fs::write(&config, "[secrets.g]\nk = \"v\"\n").expect("config");
    chmod(&config, 0o644);
    let checked = || run(BIN, &["check", "--config", &config.to_string_lossy()]);
    let out = checked();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is writable by group and others (mode 0777)"),
        "{}",
        stderr(&out)
    );
    let out = run("mount", &["-o", "remount,ro", &volume.to_string_lossy()]);
    assert!(out.status.success(), "remount: {}", stderr(&out));
    let out = checked();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Secret files are read as bytes from the checked descriptor: a binary
/// key is served as it is.
#[test]
fn a_binary_secret_file_is_served_exactly() {
    let mut daemon = Daemon::prepare("[secrets.g]\nk = { file = \"@DIR@/key.bin\" }\n");
    let key: Vec<u8> = vec![0xff, 0x00, 0xfe, b'k', 0x80];
    fs::write(daemon.dir.path().join("key.bin"), &key).expect("key");
    chmod(&daemon.dir.path().join("key.bin"), 0o600);
    daemon.spawn();
    assert_eq!(fs::read(daemon.path("secrets/g/k")).expect("read"), key);
    daemon.stop();
}
