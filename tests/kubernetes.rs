//! The manifests under deploy/kubernetes/, offline: every Kubernetes object
//! against the schemas (`kubernetes-validate --strict`), the DaemonSet
//! against what `credfs mount` needs, the ConfigMap's config through
//! `credfs check`, the consumer Pod against the tree, and the kubelet's
//! CredentialProviderConfig against its v1 fields and glob rules.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
const HELPER: &str = env!("CARGO_BIN_EXE_credfs-helper");

/// kubernetes-validate, installed by tests/run.sh into its venv.
fn validator() -> PathBuf {
    let path = std::env::var_os("CREDFS_KUBERNETES_VALIDATE").map(PathBuf::from).expect(
        "CREDFS_KUBERNETES_VALIDATE is not set: run tests/run.sh, which installs kubernetes-validate",
    );
    assert!(
        path.is_file(),
        "{} is missing: run tests/run.sh",
        path.display()
    );
    path
}

/// The documents of a manifest, parsed by the validator's own YAML library.
fn documents(file: &str) -> Vec<Value> {
    let python = validator().with_file_name("python");
    let out = run(
        &python.to_string_lossy(),
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            &format!("{DIR}/{file}"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("JSON")
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn str_of(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    let mut args = vec!["--strict".to_string()];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&validator().to_string_lossy(), &args)
}

#[test]
fn every_kubernetes_object_passes_the_schemas_strictly() {
    let files = ["credfs.yaml", "consumer-pod.yaml"];
    let out = validate(&files.map(|f| Path::new(DIR).join(f)));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "{text}");
    let objects: usize = files.iter().map(|f| documents(f).len()).sum();
    assert_eq!(
        text.matches(" passed for resource ").count(),
        objects,
        "{text}"
    );
    assert!(!text.contains("WARN") && !text.contains("ERROR"), "{text}");

    // The validator does refuse a field the schema does not have.
    let scratch = tempfile::tempdir().expect("tempdir");
    let broken = scratch.path().join("broken.yaml");
    let pod = fs::read_to_string(Path::new(DIR).join("consumer-pod.yaml")).expect("read");
    fs::write(
        &broken,
        pod.replace("readOnly: true", "readOnly: true\n          readonly: true"),
    )
    .expect("write");
    let refused = validate(&[broken]);
    assert!(!refused.status.success(), "an unknown field must fail");
}

/// The DaemonSet's container, with its volume mounts resolved to volumes:
/// mount path → volume.
struct Container<'a> {
    args: Vec<&'a str>,
    mounts: Vec<(&'a Value, &'a Value)>,
    spec: &'a Value,
    container: &'a Value,
}

fn daemon_container(daemonset: &Value) -> Container<'_> {
    let spec = &daemonset["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let volumes = spec["volumes"].as_array().expect("volumes");
    let mounts = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|mount| {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("no volume for {mount}"));
            (mount, volume)
        })
        .collect();
    let args = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(str_of)
        .collect();
    Container {
        args,
        mounts,
        spec,
        container,
    }
}

impl Container<'_> {
    /// The mount whose path is `path` or holds it.
    fn mount_holding(&self, path: &str) -> (&Value, &Value) {
        *self
            .mounts
            .iter()
            .find(|(mount, _)| {
                let at = str_of(&mount["mountPath"]);
                path == at || path.starts_with(&format!("{at}/"))
            })
            .unwrap_or_else(|| panic!("nothing is mounted at {path}"))
    }
}

/// `{ file = "…" }` paths in a config text.
fn secret_files(config: &str) -> Vec<String> {
    let table: toml::Table = config.parse().expect("the ConfigMap holds TOML");
    let mut found = Vec::new();
    fn walk(value: &toml::Value, found: &mut Vec<String>) {
        match value {
            toml::Value::Table(table) => {
                if let Some(toml::Value::String(path)) = table.get("file") {
                    found.push(path.clone());
                }
                table.values().for_each(|v| walk(v, found));
            }
            toml::Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    walk(&toml::Value::Table(table), &mut found);
    found
}

#[test]
fn the_daemonset_runs_credfs_mount_with_what_it_needs() {
    let docs = documents("credfs.yaml");
    let daemonset = of_kind(&docs, "DaemonSet");
    assert_eq!(daemonset["spec"]["updateStrategy"]["type"], "OnDelete");
    let c = daemon_container(daemonset);
    assert_eq!(c.container["securityContext"]["privileged"], true);
    assert_eq!(c.spec["hostPID"], true, "callers' /proc entries");

    // `credfs mount --config FILE MOUNTPOINT`, as the CLI parses it.
    let [command, flag, config_path, mountpoint] = c.args[..] else {
        panic!("args: {:?}", c.args)
    };
    assert_eq!((command, flag), ("mount", "--config"));

    // The mount point: the host's own directory, shared both ways.
    let (tree, tree_volume) = c.mount_holding(mountpoint);
    assert_eq!(str_of(&tree["mountPath"]), mountpoint);
    assert_eq!(tree["mountPropagation"], "Bidirectional");
    assert_eq!(str_of(&tree_volume["hostPath"]["path"]), mountpoint);

    let (_, fuse) = c.mount_holding("/dev/fuse");
    assert_eq!(fuse["hostPath"]["path"], "/dev/fuse");
    assert_eq!(fuse["hostPath"]["type"], "CharDevice");

    // The config comes from the ConfigMap as a whole directory (a subPath
    // mount would never see an update), read-only.
    let (config_mount, config_volume) = c.mount_holding(config_path);
    assert!(config_mount.get("subPath").is_none());
    assert_eq!(config_mount["readOnly"], true);
    let configmap = of_kind(&docs, "ConfigMap");
    assert_eq!(
        config_volume["configMap"]["name"],
        configmap["metadata"]["name"]
    );
    let key = Path::new(config_path).file_name().expect("a file name");
    let config = str_of(&configmap["data"][key.to_string_lossy().as_ref()]);

    let table: toml::Table = config.parse().expect("TOML");
    assert_eq!(table["mount"]["path"].as_str(), Some(mountpoint));
    assert_eq!(
        table["mount"]["allow_other"].as_bool(),
        Some(true),
        "pods read it"
    );

    // Every secret file the config names is a key of the mounted Secret,
    // readable by root only.
    let secret = of_kind(&docs, "Secret");
    let files = secret_files(config);
    assert!(!files.is_empty());
    for file in &files {
        let (mount, volume) = c.mount_holding(file);
        assert_eq!(mount["readOnly"], true);
        assert_eq!(volume["secret"]["secretName"], secret["metadata"]["name"]);
        assert_eq!(volume["secret"]["defaultMode"], 0o400);
        let key = Path::new(file).file_name().expect("a file name");
        assert!(
            secret["stringData"]
                .get(key.to_string_lossy().as_ref())
                .is_some(),
            "{file} is not in the Secret"
        );
    }
    let (_, state) = c.mount_holding("/var/lib/credfs/spool");
    assert_eq!(state["hostPath"]["path"], "/var/lib/credfs");

    // And `credfs check` accepts the config, with the Secret's files in a
    // private directory of the test's.
    let scratch = tempfile::tempdir().expect("tempdir");
    let secrets_dir = Path::new(&files[0]).parent().expect("a directory");
    for file in &files {
        let local = scratch
            .path()
            .join(Path::new(file).file_name().expect("name"));
        fs::write(&local, "placeholder").expect("write");
        fs::set_permissions(&local, fs::Permissions::from_mode(0o400)).expect("chmod");
    }
    let local_config = scratch.path().join("credfs.toml");
    let text = config.replace(
        &secrets_dir.to_string_lossy().into_owned(),
        &scratch.path().to_string_lossy(),
    );
    fs::write(&local_config, text).expect("write");
    fs::set_permissions(&local_config, fs::Permissions::from_mode(0o600)).expect("chmod");
    let check = run(BIN, &["check", "--config", &local_config.to_string_lossy()]);
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn the_consumer_pod_binds_a_registry_directory_read_only_from_the_host() {
    let daemon_docs = documents("credfs.yaml");
    let c = daemon_container(of_kind(&daemon_docs, "DaemonSet"));
    let mountpoint = c.args[3];
    let config: toml::Table = str_of(&of_kind(&daemon_docs, "ConfigMap")["data"]["credfs.toml"])
        .parse()
        .expect("TOML");

    let pod = &documents("consumer-pod.yaml")[0];
    let volume = &pod["spec"]["volumes"][0];
    let mount = &pod["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(mount["name"], volume["name"]);
    assert_eq!(mount["readOnly"], true);
    assert_eq!(mount["mountPropagation"], "HostToContainer");
    let host_path = str_of(&volume["hostPath"]["path"]);
    let name = host_path
        .strip_prefix(&format!("{mountpoint}/registries/"))
        .unwrap_or_else(|| panic!("{host_path} is not a registry of the tree"));
    assert!(config["registries"].get(name).is_some(), "{name}");
    // The pod's groups include the group the files are served to.
    let gid = config["mount"]["gid"].as_integer().expect("gid");
    let groups = pod["spec"]["securityContext"]["supplementalGroups"]
        .as_array()
        .expect("supplementalGroups");
    assert!(groups.iter().any(|g| g.as_i64() == Some(gid)));
}

/// The kubelet's image matching (`matchImages` and auth keys): the same
/// number of host labels, each matching its glob (`*` within one label),
/// the same port, and the pattern's path a prefix of the image's.
fn kubelet_matches(pattern: &str, image: &str) -> bool {
    fn split(text: &str) -> (&str, &str, &str) {
        let (host_port, path) = text.split_once('/').unwrap_or((text, ""));
        let (host, port) = host_port.split_once(':').unwrap_or((host_port, ""));
        (host, port, path)
    }
    fn label_matches(glob: &str, label: &str) -> bool {
        match glob.split_once('*') {
            None => glob == label,
            Some((head, rest)) => {
                label.starts_with(head)
                    && (head.len()..=label.len()).any(|at| label_matches(rest, &label[at..]))
            }
        }
    }
    let (p_host, p_port, p_path) = split(pattern);
    let (i_host, i_port, i_path) = split(image);
    let (p_labels, i_labels): (Vec<&str>, Vec<&str>) =
        (p_host.split('.').collect(), i_host.split('.').collect());
    p_labels.len() == i_labels.len()
        && p_labels
            .iter()
            .zip(&i_labels)
            .all(|(g, l)| label_matches(g, l))
        && p_port == i_port
        && i_path.starts_with(p_path)
}

#[test]
fn the_kubelet_provider_config_has_the_v1_fields_and_valid_globs() {
    let docs = documents("kubelet-credential-provider.yaml");
    assert_eq!(docs.len(), 1);
    let config = &docs[0];
    assert_eq!(config["apiVersion"], "kubelet.config.k8s.io/v1");
    assert_eq!(config["kind"], "CredentialProviderConfig");
    let top: Vec<&String> = config.as_object().expect("object").keys().collect();
    assert_eq!(top.len(), 3, "apiVersion, kind, providers: {top:?}");
    let providers = config["providers"].as_array().expect("providers");
    assert_eq!(providers.len(), 1);
    let provider = &providers[0];
    let known = [
        "name",
        "matchImages",
        "defaultCacheDuration",
        "apiVersion",
        "args",
        "env",
        "tokenAttributes",
    ];
    for key in provider.as_object().expect("object").keys() {
        assert!(known.contains(&key.as_str()), "unknown field {key}");
    }
    assert_eq!(
        provider["apiVersion"],
        "credentialprovider.kubelet.k8s.io/v1"
    );
    let duration = str_of(&provider["defaultCacheDuration"]);
    assert!(
        duration
            .chars()
            .all(|c| c.is_ascii_digit() || "hms".contains(c)),
        "{duration}"
    );

    // The globs: wildcards only in the host, no scheme.
    let patterns: Vec<&str> = provider["matchImages"]
        .as_array()
        .expect("matchImages")
        .iter()
        .map(str_of)
        .collect();
    for pattern in &patterns {
        assert!(!pattern.contains("://"), "{pattern}");
        let (host, rest) = pattern.split_once(['/', ':']).unwrap_or((pattern, ""));
        assert!(!rest.contains('*'), "a glob outside the host: {pattern}");
        assert!(host.split('.').all(|label| !label.is_empty()), "{pattern}");
    }
    let matched = |image: &str| patterns.iter().any(|p| kubelet_matches(p, image));
    for image in [
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app",
        "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/app",
        "ghcr.io/example-org/app",
    ] {
        assert!(matched(image), "{image} must reach credfs");
    }
    for image in [
        "docker.io/library/busybox",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example/app",
        "ghcr.io.evil.example/app",
        "quay.io/org/app",
    ] {
        assert!(!matched(image), "{image} must not reach credfs");
    }
    // Each registry of the shipped config is reached.
    let daemon_docs = documents("credfs.yaml");
    let config_text = str_of(&of_kind(&daemon_docs, "ConfigMap")["data"]["credfs.toml"]);
    let table: toml::Table = config_text.parse().expect("TOML");
    for (name, registry) in table["registries"].as_table().expect("registries") {
        let image = match registry.get("registry").and_then(toml::Value::as_str) {
            Some(prefix) => format!("{prefix}/app"),
            None => {
                let id = registry["registry_id"].as_str().expect("registry_id");
                let region = registry["region"].as_str().expect("region");
                format!("{id}.dkr.ecr.{region}.amazonaws.com/app")
            }
        };
        assert!(
            matched(&image),
            "registry {name} ({image}) is not in matchImages"
        );
    }

    // The plugin finds the tree the DaemonSet mounts, under the name the
    // kubelet runs it by, which both binaries answer to.
    let c = daemon_container(of_kind(&daemon_docs, "DaemonSet"));
    let env = provider["env"].as_array().expect("env");
    let mount_env = env
        .iter()
        .find(|e| e["name"] == "CREDFS_MOUNT")
        .expect("CREDFS_MOUNT");
    assert_eq!(str_of(&mount_env["value"]), c.args[3]);
    let name = str_of(&provider["name"]);
    let scratch = tempfile::tempdir().expect("tempdir");
    for target in [BIN, HELPER] {
        let link = scratch.path().join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).expect("symlink");
        let out = run(&link.to_string_lossy(), &[]);
        // No request on stdin: the plugin's own refusal, not a usage error.
        assert_eq!(out.status.code(), Some(1), "{target}: {}", stderr(&out));
        assert!(stderr(&out).contains("not JSON"), "{}", stderr(&out));
    }
}

#[test]
fn the_kubelet_glob_rules_as_the_test_reads_them() {
    for (pattern, image, expected) in [
        ("*.azurecr.io", "team.azurecr.io/app", true),
        ("*.azurecr.io", "a.b.azurecr.io/app", false),
        ("*.io", "k8s.io/app", true),
        ("*.io", "a.k8s.io/app", false),
        ("app*.k8s.io", "app-x.k8s.io/a", true),
        ("registry.io:8080/path", "registry.io:8080/path/x", true),
        ("registry.io:8080/path", "registry.io/path/x", false),
        ("registry.io/path", "registry.io/other", false),
    ] {
        assert_eq!(
            kubelet_matches(pattern, image),
            expected,
            "{pattern} {image}"
        );
    }
}
