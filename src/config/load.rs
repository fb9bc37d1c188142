//! Turns a config file into a `Config`: reads it through the trust checks,
//! walks its tables, and collects every problem with its `file:line:col`
//! instead of stopping at the first.

use super::checker::{Checker, ConfigError, ConfigErrors};
use super::raw::RawConfig;
use super::{AuditConfig, Config, MountConfig};
use crate::trust;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Where the daemon keeps its own files when systemd does not say
/// (`StateDirectory=` sets `$STATE_DIRECTORY`): root's, never `/var/tmp`.
const DEFAULT_STATE_DIR: &str = "/var/lib/credfs";
const DEFAULT_MAX_PENDING_UPLOADS: usize = 64;

/// Reads, checks and resolves the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_watched(path).0
}

/// Like `load`, and names every file the result depends on (the config and
/// the secret files it read or tried to read), so a watcher can reload when
/// any of them changes, a refused config included.
pub fn load_watched(path: &Path) -> (Result<Config, ConfigErrors>, Vec<PathBuf>) {
    let mut sources = vec![path.to_path_buf()];
    let loaded = load_into(path, &mut sources);
    (loaded, sources)
}

fn load_into(path: &Path, sources: &mut Vec<PathBuf>) -> Result<Config, ConfigErrors> {
    let whole_file = |message: String| {
        ConfigErrors(vec![ConfigError {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message,
        }])
    };
    // The text is read from the descriptor that was checked.
    let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let bytes = trust::read_file(&shown).map_err(|e| {
        whole_file(match e.io_error() {
            Some(io) => format!("cannot read config: {io}"),
            None => format!(
                "{}; it can name programs credfs runs",
                e.describe("config file", &shown)
            ),
        })
    })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| whole_file("cannot read config: it is not UTF-8 text".into()))?;
    parse_into(path, text, sources)
}

/// The daemon's state directory: systemd's `$STATE_DIRECTORY` (the first,
/// when it lists several), else `/var/lib/credfs`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| {
            let first = dirs.to_string_lossy().split(':').next()?.to_string();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// Parses and validates config text; `path` names it in errors and anchors
/// relative `{ file = … }` paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    parse_into(path, text, &mut Vec::new())
}

fn parse_into(path: &Path, text: &str, sources: &mut Vec<PathBuf>) -> Result<Config, ConfigErrors> {
    let mut checker = Checker {
        path,
        text,
        errors: Vec::new(),
        sources,
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            checker.error(&span, without_found_value(e.message().trim_end()));
            return Err(ConfigErrors(checker.errors));
        }
    };
    let config = checker.config(raw);
    if checker.errors.is_empty() {
        Ok(config)
    } else {
        checker.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(checker.errors))
    }
}

impl Checker<'_> {
    fn pending_limit(&mut self, value: Option<&Spanned<i64>>) -> Option<usize> {
        let value = value?;
        match usize::try_from(*value.get_ref()) {
            Ok(limit) if limit > 0 => Some(limit),
            _ => {
                self.error(
                    &value.span(),
                    "max_pending_uploads must be a positive number",
                );
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let mount = MountConfig {
            path: raw.mount.path.map(|p| PathBuf::from(p.into_inner())),
            allow_other: raw.mount.allow_other.unwrap_or(false),
            uid: raw.mount.uid.unwrap_or(0),
            gid: raw.mount.gid.unwrap_or(0),
            file_mode: self.mode(&raw.mount.file_mode).unwrap_or(0o400),
            dir_mode: self.mode(&raw.mount.dir_mode).unwrap_or(0o500),
            max_pending_uploads: self
                .pending_limit(raw.mount.max_pending_uploads.as_ref())
                .unwrap_or(DEFAULT_MAX_PENDING_UPLOADS),
        };
        let audit = raw.audit.map(|a| AuditConfig {
            path: PathBuf::from(a.path.into_inner()),
            fail_closed: a.fail_closed.unwrap_or(false),
        });
        let mut registries = BTreeMap::new();
        for (name, registry) in raw.registries {
            self.name("registry", &name);
            if let Some(registry) = self.registry(registry) {
                registries.insert(name.into_inner(), registry);
            }
        }
        let mut stores = BTreeMap::new();
        let mut bucket_owner: BTreeMap<String, String> = BTreeMap::new();
        for (name, store) in raw.stores {
            self.name("store", &name);
            if let Some(store) = self.store(store, name.get_ref(), &mut bucket_owner) {
                stores.insert(name.into_inner(), store);
            }
        }
        let mut secrets = BTreeMap::new();
        for (group, keys) in raw.secrets {
            self.name("secret group", &group);
            let mut values = BTreeMap::new();
            for (key, value) in keys.into_inner() {
                self.name("secret", &key);
                if let Some(secret) = self.secret(&value) {
                    values.insert(key.into_inner(), secret);
                }
            }
            secrets.insert(group.into_inner(), values);
        }
        Config {
            path: self.path.to_path_buf(),
            mount,
            audit,
            registries,
            stores,
            secrets,
        }
    }
}

/// serde's "invalid type" and "invalid value" messages quote the value they
/// found. Any value can be a secret written in the wrong place (or without
/// quotes), and these messages reach the log and status.json: keep only the
/// kind of value.
fn without_found_value(message: &str) -> String {
    const QUOTING_KINDS: [&str; 5] = [
        "boolean",
        "integer",
        "floating point",
        "character",
        "string",
    ];
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        // The expectation comes last and from our own schema, so the last
        // ", expected " is where the found value ends.
        let Some(end) = rest.rfind(", expected ") else {
            continue;
        };
        let found = &rest[..end];
        let kind = QUOTING_KINDS
            .into_iter()
            .find(|kind| found.starts_with(kind))
            .unwrap_or(found);
        return format!("{prefix}{kind}{}", &rest[end..]);
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::super::checker::testing::errors;
    use super::super::raw::RawSecret;
    use super::*;

    #[test]
    fn a_full_config_parses() {
        let text = r#"
[mount]
path = "/run/credfs"
file_mode = "0440"
[registries.ecr]
provider = "ecr"
region = "us-east-1"
[registries.hub]
provider = "static"
registry = "docker.io"
username = "u"
password = "p"
mode = "0440"
gid = 1000
[registries.gh]
provider = "helper"
registry = "ghcr.io/org"
command = ["/usr/bin/registry-credentials", "get", "ghcr.io/org/app"]
timeout = "5s"
[registries.local]
provider = "none"
registry = "localhost:5000"
[stores.minio]
provider = "s3"
endpoint_url = "http://127.0.0.1:9000"
access_key_id = "a"
secret_access_key = "s"
buckets = ["b1"]
[stores.osmo]
provider = "s3"
endpoint = "tos://tos.example.com/b3"
[stores.disk]
provider = "filesystem"
root = "/srv"
buckets = ["b2"]
max_object_size = "1GiB"
[stores.az]
provider = "azure"
endpoint = "azure://acct/cont"
access_key = "k"
[secrets.wandb]
key = "v"
"#;
        let config = parse(Path::new("c.toml"), text).expect("valid");
        assert_eq!(config.mount.file_mode, 0o440);
        assert_eq!(config.registries.len(), 4);
        assert_eq!(config.registries["hub"].access.mode, Some(0o440));
        assert_eq!(config.stores["disk"].max_object_size, Some(1 << 30));
        assert_eq!(config.stores["osmo"].buckets, vec!["b3".to_string()]);
        assert_eq!(config.stores["az"].buckets, vec!["cont".to_string()]);
        assert_eq!(config.secrets["wandb"]["key"].expose(), b"v");
    }

    #[test]
    fn errors_point_at_line_and_column() {
        assert_eq!(
            errors("[registries.x]\nprovider = \"magic\"\n"),
            [
                "c.toml:2:12: unknown registry provider `magic`, expected one of: ecr, gcp, acr, static, helper, none, thin-edge"
            ]
        );
        let unknown = errors("[mount]\npath = \"/x\"\nfrobnicate = 1\n");
        assert!(
            unknown[0].starts_with("c.toml:3:1: unknown field `frobnicate`"),
            "{unknown:?}"
        );
        let missing =
            errors("[registries.x]\nprovider = \"static\"\nregistry = \"r\"\nusername = \"u\"\n");
        assert_eq!(missing, ["c.toml:1:1: missing field `password`"]);
    }

    #[test]
    fn debug_output_of_a_config_and_its_raw_form_hides_every_secret() {
        let text = "[registries.hub]\nprovider = \"static\"\nregistry = \"docker.io\"\nusername = \"debug-user-1\"\npassword = \"debug-pass-2\"\n\
                    [secrets.g]\nk = \"debug-secret-3\"\n";
        let config = parse(Path::new("c.toml"), text).expect("valid");
        let raw = RawSecret::Literal(zeroize::Zeroizing::new("debug-secret-3".to_string()));
        for shown in [format!("{config:?}"), format!("{raw:?}")] {
            for secret in ["debug-user-1", "debug-pass-2", "debug-secret-3"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
    }

    #[test]
    fn an_unquoted_secret_is_refused_by_position_and_type_only() {
        for (value, kind) in [
            ("482913", "an integer"),
            ("-482913", "an integer"),
            ("4829.13", "a float"),
            ("true", "a boolean"),
            ("1979-05-27T07:32:00Z", "a date-time"),
            ("[482913]", "an array"),
        ] {
            for text in [
                format!("[secrets.app]\npin = {value}\n"),
                format!(
                    "[registries.x]\nprovider = \"static\"\nregistry = \"r\"\nusername = \"u\"\npassword = {value}\n"
                ),
            ] {
                let e = errors(&text);
                assert_eq!(e.len(), 1, "{e:?}");
                let line = text.lines().count();
                let column = text
                    .lines()
                    .last()
                    .map_or(0, |l| l.find('=').unwrap_or(0) + 3);
                assert!(
                    e[0].starts_with(&format!("c.toml:{line}:{column}: ")),
                    "{e:?}"
                );
                assert!(e[0].contains(&format!("found {kind}")), "{e:?}");
                assert!(!e[0].contains("4829") && !e[0].contains("1979"), "{e:?}");
                assert!(!e[0].contains("true"), "{e:?}");
            }
        }
    }

    #[test]
    fn serde_messages_lose_the_value_they_quote() {
        let e = errors("[mount]\nuid = \"s3cr3t-in-the-wrong-place\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("c.toml:2:7: invalid type: string, expected"),
            "{e:?}"
        );
        assert!(!e[0].contains("s3cr3t"), "{e:?}");
        let e = errors("[mount]\nallow_other = 7391\n");
        assert!(
            e[0].starts_with("c.toml:2:15: invalid type: integer, expected"),
            "{e:?}"
        );
        assert!(!e[0].contains("7391"), "{e:?}");
        assert_eq!(
            without_found_value("invalid value: integer `-1`, expected u32"),
            "invalid value: integer, expected u32"
        );
        assert_eq!(
            without_found_value("invalid type: string \"a, expected b\", expected a map"),
            "invalid type: string, expected a map"
        );
        assert_eq!(
            without_found_value("invalid type: sequence, expected a string"),
            "invalid type: sequence, expected a string"
        );
        assert_eq!(without_found_value("duplicate key"), "duplicate key");
    }
}
