//! credfs where containers run: real podman containers (runc, a busybox
//! image built offline with umoci) reading and writing a real FUSE mount
//! through bind mounts, and podman pulling from a real docker-registry with
//! the mounted credentials, directly or through docker-credential-credfs.

mod common;

use common::podman::{BUSYBOX, COPIER, Podman, image};
use common::servers::Registry;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const TOKEN: &str = "ctr-token-x-7a8b9c";
const PRIVATE: &str = "ctr-private-1000-4d5e";
const TEAM: &str = "ctr-team-2000-6f70";

/// `x` is root's (0400), `private` uid 1000's (0400), `team` group 2000's
/// (0440); directories are open to all, so that only the files' modes
/// decide.
const TOKENS_CONFIG: &str = r#"
[mount]
allow_other = true
dir_mode = "0555"
[registries.x]
provider = "static"
registry = "x.example"
username = "u"
password = "ctr-token-x-7a8b9c"
[registries.private]
provider = "static"
registry = "private.example"
username = "u"
password = "ctr-private-1000-4d5e"
uid = 1000
mode = "0400"
[registries.team]
provider = "static"
registry = "team.example"
username = "u"
password = "ctr-team-2000-6f70"
gid = 2000
mode = "0440"
"#;

const USER: &str = "puller";
const PASSWORD: &str = "ctr-registry-pass-8c9d";
const OTHER_PASSWORD: &str = "ctr-other-pass-0e1f";

/// A registry that stays in the config when `local` leaves it.
const OTHER: &str = "[registries.other]\nprovider = \"static\"\nregistry = \"other.example\"\nusername = \"u\"\npassword = \"ctr-other-pass-0e1f\"\n";

const STORE_CONFIG: &str = r#"
[mount]
allow_other = true
[stores.disk]
provider = "filesystem"
root = "@DIR@/store"
buckets = ["b"]
"#;

/// A daemon for `config` that must never log `secrets`.
fn start(config: &str, secrets: &[&str]) -> Daemon {
    let mut daemon = Daemon::prepare(config);
    for secret in secrets {
        daemon.secret(secret);
    }
    daemon.spawn();
    daemon
}

/// `podman run -v MNT/registries/NAME:/run/secrets/NAME:ro IMAGE cat
/// /run/secrets/NAME/token`, with `options` (such as `--user`) added.
fn cat_token(podman: &Podman, daemon: &Daemon, name: &str, options: &[&str]) -> Output {
    let volume = format!(
        "{}:/run/secrets/{name}:ro",
        daemon.path(&format!("registries/{name}")).display()
    );
    let token = format!("/run/secrets/{name}/token");
    let image = image(BUSYBOX);
    let mut args = vec!["-v", volume.as_str()];
    args.extend_from_slice(options);
    args.extend([image.as_str(), "cat", token.as_str()]);
    podman.run(&args)
}

/// `cat` in the container exited 1 on EACCES, and printed nothing.
fn assert_refused(out: &Output, name: &str) {
    let message = format!("cat: can't open '/run/secrets/{name}/token': Permission denied");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    assert!(stderr(out).contains(&message), "{}", stderr(out));
    assert!(out.stdout.is_empty(), "{name}'s token was printed");
}

#[test]
fn containers_read_a_bind_mounted_token_as_its_mode_allows() {
    let podman = Podman::new();
    let daemon = start(TOKENS_CONFIG, &[TOKEN, PRIVATE, TEAM]);

    let root = cat_token(&podman, &daemon, "x", &[]);
    assert_eq!(root.stdout, TOKEN.as_bytes(), "{}", stderr(&root));

    // uid 1000's 0400 token: refused to uid 1001, read by uid 1000.
    let other = cat_token(&podman, &daemon, "private", &["--user", "1001:1001"]);
    assert_refused(&other, "private");
    let owner = cat_token(&podman, &daemon, "private", &["--user", "1000:1000"]);
    assert_eq!(owner.stdout, PRIVATE.as_bytes(), "{}", stderr(&owner));

    // Group 2000's 0440 token: refused to uid 1001 alone, read once the
    // container's process has the group as a supplementary one.
    let alone = cat_token(&podman, &daemon, "team", &["--user", "1001:1001"]);
    assert_refused(&alone, "team");
    let member = cat_token(
        &podman,
        &daemon,
        "team",
        &["--user", "1001:1001", "--group-add", "2000"],
    );
    assert_eq!(member.stdout, TEAM.as_bytes(), "{}", stderr(&member));
}

/// A daemon serving `registry`'s credential as `local` (and `other`), and
/// `test/hello:latest` pushed there through its docker/config.json.
fn registry_with_image(registry: &Registry) -> Daemon {
    let daemon = start(
        &format!(
            "{}[registries.local]\nprovider = \"static\"\nregistry = \"{}\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
            OTHER,
            registry.host()
        ),
        &[PASSWORD, OTHER_PASSWORD],
    );
    let pushed = registry.push(
        &daemon.path("docker/config.json"),
        daemon.dir.path(),
        "hello",
    );
    assert!(pushed.status.success(), "skopeo copy: {}", stderr(&pushed));
    daemon
}

fn hello(registry: &Registry) -> String {
    format!("{}/test/hello:latest", registry.host())
}

/// Replaces the config file at once, as an editor or a ConfigMap update
/// does: a private file renamed over it.
fn replace_config(daemon: &Daemon, text: &str) {
    let next = daemon.dir.path().join("config.toml.next");
    fs::write(&next, text).expect("the new config");
    let private: fs::Permissions = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    fs::set_permissions(&next, private).expect("chmod");
    fs::rename(&next, &daemon.config).expect("rename the new config into place");
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("a listing")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn podman_pulls_with_the_mounted_authfile_until_the_registry_leaves_the_config() {
    let registry = Registry::start(USER, PASSWORD);
    let daemon = registry_with_image(&registry);
    let authfile = daemon.path("docker/config.json");

    let pulled = Podman::new().pull(&authfile, &hello(&registry), &[]);
    assert!(pulled.status.success(), "podman pull: {}", stderr(&pulled));
    daemon.assert_no_secret_in(&stderr(&pulled), "podman's stderr");

    // The registry leaves the config; the daemon applies the edit by itself.
    replace_config(&daemon, OTHER);
    wait_for(
        "registries/local to disappear",
        Duration::from_secs(10),
        || !names_in(&daemon.path("registries")).contains(&"local".to_string()),
    );
    assert_eq!(names_in(&daemon.path("registries")), ["other"]);
    let auths = fs::read_to_string(&authfile).expect("docker/config.json");
    assert!(!auths.contains(&registry.host()), "{auths}");

    // Fresh storage: podman has no copy of the image and must ask the
    // registry again, now without a credential.
    let refused = Podman::new().pull(&authfile, &hello(&registry), &[]);
    assert!(
        !refused.status.success(),
        "pulled after the registry left the config"
    );
    assert!(
        stderr(&refused).contains("unauthorized"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn podman_cred_helpers_pull_through_docker_credential_credfs() {
    let registry = Registry::start(USER, PASSWORD);
    let daemon = registry_with_image(&registry);
    let scratch = daemon.dir.path();
    let bin = scratch.join("bin");
    fs::create_dir(&bin).expect("a bin directory");
    let helper = bin.join("docker-credential-credfs");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_credfs-helper"), &helper)
        .expect("docker-credential-credfs");
    // An authfile that names the helper and holds no credential itself.
    let authfile = scratch.join("helpers.json");
    let helpers = serde_json::json!({ "credHelpers": { registry.host(): "credfs" } });
    fs::write(&authfile, helpers.to_string()).expect("authfile");
    // A fixed PATH: the helper is found in `bin` or nowhere.
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    let mnt = daemon.mnt.to_string_lossy();
    let env = [("PATH", path.as_str()), ("CREDFS_MOUNT", &mnt)];

    let pulled = Podman::new().pull(&authfile, &hello(&registry), &env);
    assert!(pulled.status.success(), "podman pull: {}", stderr(&pulled));
    daemon.assert_no_secret_in(&stderr(&pulled), "podman's stderr");

    // Without the helper the same pull has no credential: the helper is
    // what authenticated.
    fs::remove_file(&helper).expect("remove the helper");
    let refused = Podman::new().pull(&authfile, &hello(&registry), &env);
    assert!(
        !refused.status.success(),
        "pulled without docker-credential-credfs in {}: is one installed in /usr/bin?",
        bin.display()
    );
    assert!(
        stderr(&refused).contains("docker-credential-credfs"),
        "{}",
        stderr(&refused)
    );
}

/// Runs the copying image: `/src` is `src` (read-only), `/out` is the
/// mounted bucket `b`; its entrypoint is `cp /src/build.zip /out/build.zip`.
fn copy_in_container(podman: &Podman, daemon: &Daemon, src: &Path) -> Output {
    let from = format!("{}:/src:ro", src.display());
    let to = format!("{}:/out", daemon.path("projects/b").display());
    podman.run(&["-v", &from, "-v", &to, &image(COPIER)])
}

/// What the store holds for bucket `b`, upload spool files included.
fn stored(daemon: &Daemon) -> Vec<String> {
    let bucket = daemon.store().join("b");
    let mut names: Vec<String> = names_in(&bucket)
        .into_iter()
        .filter(|n| !n.starts_with(".credfs-instance-"))
        .collect();
    names.extend(spool_files(&bucket).iter().map(|p| p.display().to_string()));
    names
}

/// The copy failed at close with EINVAL, as busybox's cp reports it.
fn assert_bad_archive_refused(out: &Output) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let message = stderr(out);
    assert!(
        message.contains("/out/build.zip") && message.contains("Invalid argument"),
        "{message}"
    );
}

fn source_dir(daemon: &Daemon, name: &str) -> PathBuf {
    let dir = daemon.dir.path().join(name);
    fs::create_dir(&dir).expect("a source directory");
    dir
}

#[test]
fn a_container_uploads_an_archive_by_copying_it_into_the_bucket() {
    let podman = Podman::new();
    let daemon = start(STORE_CONFIG, &[]);
    let bad = source_dir(&daemon, "bad");
    fs::write(bad.join("build.zip"), "not a zip archive\n".repeat(4096)).expect("bad");
    let good = source_dir(&daemon, "good");
    let archive = make_zip(&good, "build.zip", 1 << 20);

    // A bad archive is refused at close, and nothing is stored.
    assert_bad_archive_refused(&copy_in_container(&podman, &daemon, &bad));
    assert!(stored(&daemon).is_empty(), "{:?}", stored(&daemon));
    assert!(names_in(&daemon.path("projects/b")).is_empty());

    let out = copy_in_container(&podman, &daemon, &good);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stored(&daemon), ["build.zip"]);
    let uploaded = daemon.store().join("b/build.zip");
    assert_eq!(sha256(&uploaded), sha256(&archive));
    assert_eq!(
        sha256(&daemon.path("projects/b/build.zip")),
        sha256(&archive)
    );

    // A bad archive over it leaves it untouched.
    assert_bad_archive_refused(&copy_in_container(&podman, &daemon, &bad));
    assert_eq!(stored(&daemon), ["build.zip"]);
    assert_eq!(sha256(&uploaded), sha256(&archive));
}
