//! Who may read what, as the other party would try it: another uid, root
//! without capabilities, a member of a supplementary group, and two users
//! reading `docker/config.json` turn and turn about.

mod common;

use common::*;
use serde_json::Value;
use std::process::Output;

const HUB: &str = "perm-hub-pass-1f2e";
const PROD: &str = "PERM-PROD-SECRET-3d4c";
const TEAM: &str = "perm-team-pass-5b6a";

/// The mount-wide group 1000 may read; `prod` is root's alone, `team`
/// belongs to group 2000.
const CONFIG: &str = r#"
[mount]
allow_other = true
gid = 1000
file_mode = "0440"
dir_mode = "0550"
[registries.hub]
provider = "static"
registry = "docker.io"
username = "builder"
password = "perm-hub-pass-1f2e"
[registries.prod]
provider = "static"
registry = "prod.example.com"
username = "deployer"
password = "PERM-PROD-SECRET-3d4c"
gid = 0
mode = "0400"
[registries.team]
provider = "static"
registry = "team.example.com"
username = "team"
password = "perm-team-pass-5b6a"
gid = 2000
mode = "0440"
[secrets.ci]
owned = "perm-owned-by-1000-7e8f"
"#;

fn start() -> Daemon {
    require_program("setpriv");
    let mut daemon = Daemon::prepare(CONFIG);
    for secret in [HUB, PROD, TEAM, "perm-owned-by-1000-7e8f"] {
        daemon.secret(secret);
    }
    daemon.spawn();
    daemon
}

/// Runs `program` as uid 1001, primary group 1000, and `groups` besides.
fn as_builder(groups: &str, program: &str, args: &[&str]) -> Output {
    let mut argv = vec!["--reuid", "1001", "--regid", "1000"];
    match groups {
        "" => argv.push("--clear-groups"),
        groups => argv.extend(["--groups", groups]),
    }
    argv.push(program);
    argv.extend_from_slice(args);
    run("setpriv", &argv)
}

/// Runs `program` as root with no capabilities at all, as a hardened
/// service or `docker run --user 0 --cap-drop ALL` would.
fn as_root_without_capabilities(program: &str, args: &[&str]) -> Output {
    let mut argv = vec!["--bounding-set=-all", "--inh-caps=-all", program];
    argv.extend_from_slice(args);
    run("setpriv", &argv)
}

/// The registries `docker/config.json` shows, by key.
fn registries_in(output: &Output) -> Vec<String> {
    assert!(output.status.success(), "{}", stderr(output));
    let json: Value = serde_json::from_slice(&output.stdout).expect("docker/config.json is JSON");
    let mut keys: Vec<String> = json["auths"]
        .as_object()
        .expect("auths")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[test]
fn docker_config_shows_each_reader_only_the_registries_it_may_read() {
    let daemon = start();
    let config = daemon.path("docker/config.json");
    let config = config.to_string_lossy();
    let everything = vec![
        "docker.io",
        "https://index.docker.io/v1/",
        "prod.example.com",
        "team.example.com",
    ];
    // Turn and turn about, many times: the kernel must never hand one
    // reader's rendering to the next.
    for _ in 0..10 {
        assert_eq!(registries_in(&run("cat", &[&config])), everything);
        let builder = as_builder("", "cat", &[&config]);
        assert_eq!(
            registries_in(&builder),
            vec!["docker.io", "https://index.docker.io/v1/"]
        );
        daemon.assert_no_secret_in(&String::from_utf8_lossy(&builder.stdout), "uid 1001");
        let member = as_builder("2000", "cat", &[&config]);
        assert_eq!(
            registries_in(&member),
            vec![
                "docker.io",
                "https://index.docker.io/v1/",
                "team.example.com"
            ]
        );
    }
    // The size each reader is told is the size of what it reads.
    for groups in ["", "2000"] {
        let read = as_builder(groups, "cat", &[&config]);
        let size = as_builder(groups, "stat", &["-c", "%s", &config]);
        let size: usize = String::from_utf8_lossy(&size.stdout)
            .trim()
            .parse()
            .expect("a size");
        assert_eq!(size, read.stdout.len(), "groups {groups:?}");
    }
    // Readers that stat and read exactly st_size bytes, as Go does.
    // Debian's python: a pyenv shim under /root is not the builder's to run.
    let exact = as_builder(
        "",
        "/usr/bin/python3",
        &[
            "-c",
            &format!(
                "import os\nfd = os.open({config:?}, os.O_RDONLY)\nn = os.fstat(fd).st_size\ndata = os.read(fd, n)\nassert len(data) == n and data.rstrip().endswith(b'}}'), (n, len(data))\nprint('ok')"
            ),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&exact.stdout).trim(),
        "ok",
        "{}",
        stderr(&exact)
    );
}

#[test]
fn skopeo_sees_only_what_its_user_may_read() {
    require_program("skopeo");
    let daemon = start();
    let config = daemon.path("docker/config.json");
    let config = config.to_string_lossy();
    // skopeo reads the authfile as the user that runs it; HOME, because
    // skopeo reads its own config there and /root is not uid 1001's.
    let login = |registry: &str| {
        as_builder(
            "",
            "env",
            &[
                "HOME=/tmp",
                "skopeo",
                "login",
                "--get-login",
                "--authfile",
                &config,
                registry,
            ],
        )
    };
    let hub = login("docker.io");
    assert_eq!(
        String::from_utf8_lossy(&hub.stdout).trim(),
        "builder",
        "{}",
        stderr(&hub)
    );
    let prod = login("prod.example.com");
    assert!(!prod.status.success(), "prod's login is not uid 1001's");
    assert!(!String::from_utf8_lossy(&prod.stdout).contains("deployer"));
}

#[test]
fn root_without_capabilities_gets_the_mode_bits_like_anyone_else() {
    let daemon = start();
    let prod = daemon.path("registries/prod/password");
    let prod = prod.to_string_lossy();
    let hub = daemon.path("registries/hub/password");
    let hub = hub.to_string_lossy();

    // prod is uid 0's own (0400): the owner class lets uid 0 in, caps or not.
    assert_eq!(run("cat", &[&prod]).stdout, PROD.as_bytes());
    assert_eq!(
        as_root_without_capabilities("cat", &[&prod]).stdout,
        PROD.as_bytes()
    );
    assert_eq!(run("cat", &[&hub]).stdout, HUB.as_bytes());

    // A file of another owner: root needs CAP_DAC_READ_SEARCH or
    // CAP_DAC_OVERRIDE, exactly as with a file on disk.
    let mut daemon_1000 = Daemon::prepare(
        "[mount]\nallow_other = true\ndir_mode = \"0555\"\n[secrets.ci]\nkey = { file = \"@DIR@/key\" }\n[registries.ci]\nprovider = \"static\"\nregistry = \"ci.example\"\nusername = \"u\"\npassword = \"perm-ci-pass-9a0b\"\nuid = 1000\nmode = \"0400\"\n",
    );
    std::fs::write(daemon_1000.dir.path().join("key"), "perm-key-value-1c2d").expect("key");
    daemon_1000.secret("perm-ci-pass-9a0b");
    daemon_1000.secret("perm-key-value-1c2d");
    daemon_1000.spawn();
    let token = daemon_1000.path("registries/ci/token");
    let token = token.to_string_lossy();
    let on_disk = daemon_1000.dir.path().join("on-disk");
    run(
        "install",
        &[
            "-o",
            "1000",
            "-m",
            "0400",
            "/dev/null",
            &on_disk.to_string_lossy(),
        ],
    );
    let kernel = as_root_without_capabilities("cat", &[&on_disk.to_string_lossy()]);
    assert!(
        stderr(&kernel).contains("Permission denied"),
        "the kernel's own answer: {}",
        stderr(&kernel)
    );
    let refused = as_root_without_capabilities("cat", &[&token]);
    assert!(
        refused.stdout.is_empty(),
        "root without caps read uid 1000's token"
    );
    assert!(
        stderr(&refused).contains("Permission denied"),
        "{}",
        stderr(&refused)
    );
    // docker/config.json follows the same rule.
    let config = daemon_1000.path("docker/config.json");
    let config = config.to_string_lossy();
    assert_eq!(registries_in(&run("cat", &[&config])), vec!["ci.example"]);
    let without = registries_in(&as_root_without_capabilities("cat", &[&config]));
    assert!(without.is_empty(), "{without:?}");
    // access(2) agrees with open(2).
    assert!(
        !as_root_without_capabilities("test", &["-r", &token])
            .status
            .success()
    );
    assert!(run("test", &["-r", &token]).status.success());
    // Read-search alone is enough to read, as on disk.
    let read_search = run(
        "setpriv",
        &[
            "--bounding-set=-all,+dac_read_search",
            "--inh-caps=-all",
            "cat",
            &token,
        ],
    );
    assert_eq!(
        read_search.stdout,
        b"perm-ci-pass-9a0b",
        "{}",
        stderr(&read_search)
    );
    // The owner itself reads it with no capability at all.
    let owner = as_user("1000", "cat", &[&token]);
    assert_eq!(owner.stdout, b"perm-ci-pass-9a0b", "{}", stderr(&owner));
}

#[test]
fn supplementary_groups_count_for_open_and_access() {
    let daemon = start();
    let team = daemon.path("registries/team/password");
    let team = team.to_string_lossy();
    let outsider = as_builder("", "cat", &[&team]);
    assert!(
        stderr(&outsider).contains("Permission denied"),
        "{}",
        stderr(&outsider)
    );
    assert!(!as_builder("", "test", &["-r", &team]).status.success());
    let member = as_builder("2000", "cat", &[&team]);
    assert_eq!(member.stdout, TEAM.as_bytes(), "{}", stderr(&member));
    assert!(as_builder("2000", "test", &["-r", &team]).status.success());
}

#[test]
fn a_crashing_daemon_leaves_no_core_file() {
    // Started as a careless admin might: cores allowed, and the kernel's
    // core_pattern writes them into the working directory.
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    assert_eq!(
        pattern.trim(),
        "core",
        "this test needs core_pattern `core` to see a core file"
    );
    let mut daemon = Daemon::prepare("[secrets.ci]\nkey = \"perm-core-secret-4d5e\"\n");
    daemon.secret("perm-core-secret-4d5e");
    let dir = daemon.dir.path().to_string_lossy().into_owned();
    let script = format!("ulimit -c unlimited && cd {dir} && exec \"$0\" \"$@\"");
    daemon.spawn_wrapped(&["sh", "-c", &script], &[]);
    let key = daemon.path("secrets/ci/key");
    assert_eq!(
        std::fs::read(&key).expect("the secret"),
        b"perm-core-secret-4d5e"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid())).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core limit");
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    let status = daemon.stop_with(libc::SIGABRT);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}");
    let cores: Vec<String> = std::fs::read_dir(daemon.dir.path())
        .expect("scratch dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("core"))
        .collect();
    assert!(cores.is_empty(), "core files: {cores:?}");
}

/// Under the unit's capabilities (CAP_SYS_ADMIN alone, no CAP_SYS_PTRACE)
/// the daemon still sees its callers' capabilities: root reads a uid-1000
/// 0400 token, root without capabilities does not.
#[test]
fn capabilities_count_when_the_daemon_runs_as_the_unit_confines_it() {
    require_program("setpriv");
    let mut daemon = Daemon::prepare(
        "[mount]\nallow_other = true\ndir_mode = \"0555\"\n[registries.ci]\nprovider = \"static\"\nregistry = \"ci.example\"\nusername = \"u\"\npassword = \"perm-unit-pass-3e4f\"\nuid = 1000\nmode = \"0400\"\n",
    );
    daemon.secret("perm-unit-pass-3e4f");
    daemon.spawn_wrapped(
        &[
            "setpriv",
            "--no-new-privs",
            "--bounding-set=-all,+sys_admin",
            "--inh-caps=-all",
        ],
        &[],
    );
    let token = daemon.path("registries/ci/token");
    let token = token.to_string_lossy();
    let root = run("cat", &[&token]);
    assert_eq!(root.stdout, b"perm-unit-pass-3e4f", "{}", stderr(&root));
    let refused = as_root_without_capabilities("cat", &[&token]);
    assert!(
        stderr(&refused).contains("Permission denied"),
        "{}",
        stderr(&refused)
    );
}
