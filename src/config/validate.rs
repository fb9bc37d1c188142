//! Turns the raw TOML into a `Config`, collecting every problem with its
//! `file:line:col` instead of stopping at the first.

use super::raw::{Named, RawConfig, RawRegistry, RawSecret, RawStore};
use super::values::{check_env_name, parse_duration, parse_mode, parse_size};
use super::*;
use crate::names::check_name;
use crate::trust;
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

/// S3's largest part; parts are also read into memory and sent as one
/// buffer, which must stay well inside a u32 length.
const MAX_PART_SIZE: u64 = 5 << 30;
const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// Where the daemon keeps its own files when systemd does not say
/// (`StateDirectory=` sets `$STATE_DIRECTORY`): root's, never `/var/tmp`.
const DEFAULT_STATE_DIR: &str = "/var/lib/credfs";
const MIN_PART_SIZE: u64 = 5 << 20;
const DEFAULT_MAX_PENDING_UPLOADS: usize = 64;
const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HELPER_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in one config file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

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
    let bytes = read_trusted(&shown).map_err(|e| {
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

/// The whole of a trusted file; it can hold secrets.
fn read_trusted(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, trust::Distrust> {
    let mut file = trust::open_file(path)?;
    let io = |e| trust::Distrust {
        at: path.to_path_buf(),
        reason: trust::Reason::Io(e),
    };
    let size = file.metadata().map_err(io)?.len();
    // Sized up front: a grown buffer would leave unwiped copies behind.
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(size as usize + 1));
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
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

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
    /// Files read besides the config.
    sources: &'a mut Vec<PathBuf>,
}

impl Checker<'_> {
    fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        self.errors.push(ConfigError {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        });
    }

    fn check<T>(&mut self, span: &Range<usize>, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.error(span, message)).ok()
    }

    fn mode(&mut self, value: &Option<Spanned<String>>) -> Option<u32> {
        let value = value.as_ref()?;
        self.check(&value.span(), parse_mode(value.get_ref()))
    }

    fn name(&mut self, what: &str, name: &Spanned<String>) {
        let result = check_name(what, name.get_ref());
        self.check(&name.span(), result);
    }

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

    fn secret(&mut self, value: &Spanned<RawSecret>) -> Option<Secret> {
        let span = value.span();
        match value.get_ref() {
            RawSecret::Literal(text) => Some(Secret::new(text.as_bytes().to_vec())),
            RawSecret::Env(name) => match std::env::var_os(name) {
                Some(v) => Some(Secret::new(v.into_encoded_bytes())),
                None => {
                    self.error(&span, format!("environment variable `{name}` is not set"));
                    None
                }
            },
            RawSecret::File(file) => {
                let path = self.source(file);
                match read_trusted(&path) {
                    Ok(bytes) => Some(Secret::new(strip_one_newline(bytes.to_vec()))),
                    Err(e) => {
                        let message = match e.io_error() {
                            Some(io) => format!("cannot read secret file `{file}`: {io}"),
                            None => e.describe("secret file", &path),
                        };
                        self.error(&span, message);
                        None
                    }
                }
            }
        }
    }

    /// A file named by the config, relative to the config's directory.
    fn source(&mut self, file: &str) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("/"));
        let path = base.join(file);
        self.sources.push(path.clone());
        path
    }

    fn required<'v, T>(
        &mut self,
        table: &Range<usize>,
        key: &str,
        value: &'v Option<Spanned<T>>,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.error(table, format!("missing field `{key}`"));
        }
        value.as_ref()
    }

    fn registry_host(&mut self, value: &Spanned<String>) -> Option<String> {
        let host = value.get_ref();
        if host.is_empty() || host.contains("://") || host.contains(char::is_whitespace) {
            self.error(
                &value.span(),
                format!("invalid registry `{host}`: expected host[:port][/path] without a scheme"),
            );
            return None;
        }
        Some(host.trim_end_matches('/').to_string())
    }

    /// Reports keys the provider does not use, so a typo or a key meant for
    /// another provider is not silently ignored.
    fn only_keys(
        &mut self,
        provider: &str,
        present: &[(&str, Option<Range<usize>>)],
        allowed: &[&str],
    ) {
        for (key, span) in present {
            if let Some(span) = span
                && !allowed.contains(key)
            {
                self.error(
                    span,
                    format!("key `{key}` is not valid for provider `{provider}`"),
                );
            }
        }
    }

    fn registry(&mut self, entry: Spanned<RawRegistry>) -> Option<RegistryConfig> {
        let table = entry.span();
        let raw = entry.into_inner();
        let present = [
            ("registry", raw.registry.as_ref().map(Spanned::span)),
            ("region", raw.region.as_ref().map(Spanned::span)),
            ("registry_id", raw.registry_id.as_ref().map(Spanned::span)),
            ("profile", raw.profile.as_ref().map(Spanned::span)),
            ("endpoint_url", raw.endpoint_url.as_ref().map(Spanned::span)),
            ("username", raw.username.as_ref().map(Spanned::span)),
            ("password", raw.password.as_ref().map(Spanned::span)),
            ("command", raw.command.as_ref().map(Spanned::span)),
            ("protocol", raw.protocol.as_ref().map(Spanned::span)),
            ("timeout", raw.timeout.as_ref().map(Spanned::span)),
            ("ttl", raw.ttl.as_ref().map(Spanned::span)),
            ("env", raw.env.as_ref().map(Spanned::span)),
            (
                "credentials_file",
                raw.credentials_file.as_ref().map(Spanned::span),
            ),
            ("section", raw.section.as_ref().map(Spanned::span)),
            ("env_index", raw.env_index.as_ref().map(Spanned::span)),
        ];
        let access = Access {
            uid: raw.uid,
            gid: raw.gid,
            mode: self.mode(&raw.mode),
        };
        let provider_name = raw.provider.get_ref().as_str();
        let provider = match provider_name {
            "ecr" => {
                self.only_keys(
                    provider_name,
                    &present,
                    &[
                        "region",
                        "registry_id",
                        "profile",
                        "endpoint_url",
                        "registry",
                    ],
                );
                let region = self.required(&table, "region", &raw.region);
                let registry = raw.registry.as_ref().map(|r| self.registry_host(r));
                RegistryProviderConfig::Ecr {
                    region: region?.get_ref().clone(),
                    registry: registry.map_or(Some(None), |r| r.map(Some))?,
                    registry_id: raw.registry_id.map(Spanned::into_inner),
                    profile: raw.profile.map(Spanned::into_inner),
                    endpoint_url: raw.endpoint_url.map(Spanned::into_inner),
                }
            }
            "static" => {
                self.only_keys(
                    provider_name,
                    &present,
                    &["registry", "username", "password"],
                );
                let registry = self.required(&table, "registry", &raw.registry);
                let registry = registry.and_then(|r| self.registry_host(r));
                let username = self.required(&table, "username", &raw.username);
                let username = username.and_then(|u| self.secret(u));
                let password = self.required(&table, "password", &raw.password);
                let password = password.and_then(|p| self.secret(p));
                RegistryProviderConfig::Static {
                    registry: registry?,
                    username: username?,
                    password: password?,
                }
            }
            "helper" => {
                self.only_keys(
                    provider_name,
                    &present,
                    &["registry", "command", "protocol", "timeout", "ttl", "env"],
                );
                let registry = self.required(&table, "registry", &raw.registry);
                let registry = registry.and_then(|r| self.registry_host(r));
                let command = self.required(&table, "command", &raw.command).cloned();
                let command = command.and_then(|c| self.helper_command(c));
                let protocol = match raw.protocol.as_ref() {
                    None => Some(HelperProtocol::ThinEdge),
                    Some(p) => match p.get_ref().as_str() {
                        "thin-edge" => Some(HelperProtocol::ThinEdge),
                        "docker" => Some(HelperProtocol::Docker),
                        other => {
                            self.error(&p.span(), format!("unknown helper protocol `{other}`, expected `thin-edge` or `docker`"));
                            None
                        }
                    },
                };
                let timeout = self.duration(&raw.timeout, DEFAULT_HELPER_TIMEOUT);
                let ttl = self.duration(&raw.ttl, DEFAULT_HELPER_TTL);
                let env = self.helper_env(raw.env.as_ref());
                RegistryProviderConfig::Helper {
                    registry: registry?,
                    command: command?,
                    protocol: protocol?,
                    timeout: timeout?,
                    ttl: ttl?,
                    env: env?,
                }
            }
            "none" => {
                self.only_keys(provider_name, &present, &["registry"]);
                let registry = self.required(&table, "registry", &raw.registry);
                RegistryProviderConfig::None {
                    registry: registry.and_then(|r| self.registry_host(r))?,
                }
            }
            "thin-edge" => {
                self.only_keys(
                    provider_name,
                    &present,
                    &["credentials_file", "section", "env_index"],
                );
                self.thin_edge(&table, &raw)?
            }
            other => {
                self.error(
                    &raw.provider.span(),
                    format!("unknown registry provider `{other}`, expected one of: ecr, static, helper, none, thin-edge"),
                );
                return None;
            }
        };
        Some(RegistryConfig { access, provider })
    }

    /// thin-edge's own credentials, read once at load: a `[registryN]`
    /// section of its credentials.toml, or its CONTAINER_REGISTRYn_*
    /// variables. They serve as a `static` registry.
    fn thin_edge(
        &mut self,
        table: &Range<usize>,
        raw: &RawRegistry,
    ) -> Option<RegistryProviderConfig> {
        let (repo, username, password) = match (&raw.credentials_file, &raw.section, &raw.env_index)
        {
            (Some(file), Some(section), None) => self.thin_edge_file(file, section)?,
            (None, None, Some(index)) => {
                let n = index.get_ref();
                let mut var = |field: &str| {
                    let name = format!("CONTAINER_REGISTRY{n}_{field}");
                    let value = std::env::var(&name).ok();
                    if value.is_none() {
                        self.error(
                            &index.span(),
                            format!("environment variable `{name}` is not set"),
                        );
                    }
                    value
                };
                let (repo, username, password) = (var("REPO"), var("USERNAME"), var("PASSWORD"));
                (repo?, username?, password?)
            }
            _ => {
                self.error(
                    table,
                    "a thin-edge registry needs `credentials_file` and `section`, or `env_index`",
                );
                return None;
            }
        };
        let span = raw.provider.span();
        let registry = self.registry_host(&Spanned::new(span, repo))?;
        Some(RegistryProviderConfig::Static {
            registry,
            username: Secret::from(username),
            password: Secret::from(password),
        })
    }

    fn thin_edge_file(
        &mut self,
        file: &Spanned<String>,
        section: &Spanned<String>,
    ) -> Option<(String, String, String)> {
        let path = self.source(file.get_ref());
        let bytes = match read_trusted(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                let message = match e.io_error() {
                    Some(io) => format!(
                        "cannot read thin-edge credentials `{}`: {io}",
                        file.get_ref()
                    ),
                    None => e.describe("thin-edge credentials", &path),
                };
                self.error(&file.span(), message);
                return None;
            }
        };
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|_| "not UTF-8 text".to_string())
            .and_then(|text| {
                toml::from_str::<toml::Table>(text).map_err(|e| e.message().to_string())
            });
        let mut table: toml::Table = match parsed {
            Ok(table) => table,
            Err(e) => {
                let message = format!(
                    "thin-edge credentials `{}` are not valid TOML: {e}",
                    file.get_ref(),
                );
                self.error(&file.span(), message);
                return None;
            }
        };
        let field = |name: &str| {
            table
                .get(section.get_ref())
                .and_then(|s| s.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let fields = (field("repo"), field("username"), field("password"));
        table.iter_mut().for_each(|(_, v)| wipe_toml(v));
        match fields {
            (Some(repo), Some(username), Some(password)) => Some((repo, username, password)),
            _ => {
                self.error(
                    &section.span(),
                    format!(
                        "`[{}]` of `{}` needs repo, username and password",
                        section.get_ref(),
                        file.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn helper_command(&mut self, command: Spanned<Vec<String>>) -> Option<Vec<String>> {
        match command.get_ref().first() {
            Some(program) if Path::new(program).is_absolute() => {
                let program = Path::new(program);
                let checked = trust::check_program(program)
                    .map_err(|e| e.describe("helper program", program));
                self.check(&command.span(), checked)?;
                Some(command.into_inner())
            }
            Some(program) => {
                self.error(
                    &command.span(),
                    format!("helper program `{program}` must be an absolute path"),
                );
                None
            }
            None => {
                self.error(&command.span(), "helper command is empty");
                None
            }
        }
    }

    /// The variables a helper gets besides PATH, HOME and LANG.
    fn helper_env(
        &mut self,
        table: Option<&Spanned<Named<RawSecret>>>,
    ) -> Option<BTreeMap<String, Secret>> {
        let mut env = BTreeMap::new();
        let mut complete = true;
        for (name, value) in table.map(Spanned::get_ref).into_iter().flatten() {
            let valid = check_env_name(name.get_ref());
            let secret = self.secret(value);
            match (self.check(&name.span(), valid), secret) {
                (Some(()), Some(secret)) => {
                    env.insert(name.get_ref().clone(), secret);
                }
                _ => complete = false,
            }
        }
        complete.then_some(env)
    }

    fn duration(&mut self, value: &Option<Spanned<String>>, default: Duration) -> Option<Duration> {
        match value {
            None => Some(default),
            Some(v) => self.check(&v.span(), parse_duration(v.get_ref())),
        }
    }

    fn size(&mut self, value: &Option<Spanned<String>>) -> Option<Option<u64>> {
        match value {
            None => Some(None),
            Some(v) => self.check(&v.span(), parse_size(v.get_ref())).map(Some),
        }
    }

    fn optional_secret(&mut self, value: &Option<Spanned<RawSecret>>) -> Option<Option<Secret>> {
        match value {
            None => Some(None),
            Some(v) => self.secret(v).map(Some),
        }
    }

    /// Refuses a directory credfs writes into unless `trust` does not.
    fn trusted_dir(&mut self, what: &str, path: &Path, span: &Range<usize>) -> Option<()> {
        let checked = trust::check_dir(path).map_err(|e| e.describe(what, path));
        self.check(span, checked)
    }

    /// The spool directory, by default in the state directory; an error
    /// about the default points at the store's `provider`.
    fn spool_dir(
        &mut self,
        value: &Option<Spanned<String>>,
        provider: &Spanned<String>,
    ) -> Option<PathBuf> {
        let (path, span) = match value {
            Some(dir) => (PathBuf::from(dir.get_ref()), dir.span()),
            None => (state_dir().join("spool"), provider.span()),
        };
        self.trusted_dir("spool directory", &path, &span)?;
        Some(path)
    }

    fn store(
        &mut self,
        entry: Spanned<RawStore>,
        store_name: &str,
        bucket_owner: &mut BTreeMap<String, String>,
    ) -> Option<StoreConfig> {
        let table = entry.span();
        let raw = entry.into_inner();
        let present = [
            ("root", raw.root.as_ref().map(Spanned::span)),
            ("sync", raw.sync.as_ref().map(Spanned::span)),
            ("endpoint_url", raw.endpoint_url.as_ref().map(Spanned::span)),
            ("endpoint", raw.endpoint.as_ref().map(Spanned::span)),
            ("region", raw.region.as_ref().map(Spanned::span)),
            (
                "access_key_id",
                raw.access_key_id.as_ref().map(Spanned::span),
            ),
            (
                "secret_access_key",
                raw.secret_access_key.as_ref().map(Spanned::span),
            ),
            ("access_key", raw.access_key.as_ref().map(Spanned::span)),
            ("profile", raw.profile.as_ref().map(Spanned::span)),
            (
                "force_path_style",
                raw.force_path_style.as_ref().map(Spanned::span),
            ),
            ("prefix", raw.prefix.as_ref().map(Spanned::span)),
            ("part_size", raw.part_size.as_ref().map(Spanned::span)),
            ("checksums", raw.checksums.as_ref().map(Spanned::span)),
            ("spool_dir", raw.spool_dir.as_ref().map(Spanned::span)),
            (
                "connection_string",
                raw.connection_string.as_ref().map(Spanned::span),
            ),
            ("account", raw.account.as_ref().map(Spanned::span)),
        ];
        let mut buckets: Vec<Spanned<String>> = raw
            .buckets
            .as_ref()
            .map(|b| b.get_ref().clone())
            .unwrap_or_default();
        let endpoint = raw.endpoint.as_ref().and_then(|e| {
            let parsed = parse_endpoint(e.get_ref());
            self.check(&e.span(), parsed)
                .map(|parsed| (parsed, e.span()))
        });
        if let Some((parsed, span)) = &endpoint {
            buckets.push(Spanned::new(span.clone(), parsed.bucket.clone()));
        }
        if buckets.is_empty() {
            self.error(&table, "missing field `buckets`");
        }
        for bucket in &buckets {
            self.name("bucket", bucket);
            let name = bucket.get_ref().clone();
            if let Some(owner) = bucket_owner.get(&name) {
                self.error(
                    &bucket.span(),
                    format!("duplicate bucket `{name}`: already served by store `{owner}`"),
                );
            } else {
                bucket_owner.insert(name, store_name.to_string());
            }
        }
        let access = Access {
            uid: raw.uid,
            gid: raw.gid,
            mode: self.mode(&raw.mode),
        };
        let max_object_size = self.size(&raw.max_object_size);
        let provider_name = raw.provider.get_ref().as_str();
        let provider = match provider_name {
            "filesystem" => {
                self.only_keys(provider_name, &present, &["root", "sync"]);
                let root = self.required(&table, "root", &raw.root);
                let root = root.and_then(|r| {
                    let path = PathBuf::from(r.get_ref());
                    let result = if path.is_absolute() {
                        Ok(path)
                    } else {
                        Err(format!(
                            "store root `{}` must be an absolute path",
                            r.get_ref()
                        ))
                    };
                    self.check(&r.span(), result)
                });
                let root = root?;
                if let Some(span) = raw.root.as_ref().map(Spanned::span) {
                    self.trusted_dir("store root", &root, &span)?;
                }
                for bucket in &buckets {
                    self.trusted_dir(
                        "bucket directory",
                        &root.join(bucket.get_ref()),
                        &bucket.span(),
                    )?;
                }
                StoreProviderConfig::Filesystem {
                    root,
                    sync: raw.sync.map(Spanned::into_inner).unwrap_or(true),
                }
            }
            "s3" => {
                self.only_keys(
                    provider_name,
                    &present,
                    &[
                        "endpoint_url",
                        "endpoint",
                        "region",
                        "access_key_id",
                        "secret_access_key",
                        "access_key",
                        "profile",
                        "force_path_style",
                        "prefix",
                        "part_size",
                        "checksums",
                        "spool_dir",
                    ],
                );
                if let Some((parsed, span)) = &endpoint
                    && parsed.scheme == "azure"
                {
                    self.error(span, "an azure:// endpoint needs provider = \"azure\"");
                }
                let part_size = match &raw.part_size {
                    None => Some(DEFAULT_PART_SIZE),
                    Some(v) => {
                        let size = parse_size(v.get_ref()).and_then(|s| {
                            if s < MIN_PART_SIZE {
                                Err(format!("part_size `{}` is below the 5MiB minimum of S3 multipart uploads", v.get_ref()))
                            } else if s > MAX_PART_SIZE {
                                Err(format!("part_size `{}` is above the 5GiB maximum of S3 multipart uploads", v.get_ref()))
                            } else {
                                Ok(s)
                            }
                        });
                        self.check(&v.span(), size)
                    }
                };
                let checksums = match &raw.checksums {
                    None => Some(false),
                    Some(v) => match v.get_ref().as_str() {
                        "when_required" => Some(false),
                        "when_supported" => Some(true),
                        other => {
                            self.error(&v.span(), format!("unknown checksums `{other}`, expected `when_required` or `when_supported`"));
                            None
                        }
                    },
                };
                let access_key_id = self.optional_secret(&raw.access_key_id);
                let secret = raw
                    .secret_access_key
                    .as_ref()
                    .or(raw.access_key.as_ref())
                    .cloned();
                let secret_access_key = self.optional_secret(&secret);
                let endpoint_url = raw
                    .endpoint_url
                    .map(Spanned::into_inner)
                    .or_else(|| endpoint.as_ref().and_then(|(p, _)| p.endpoint_url.clone()));
                StoreProviderConfig::S3 {
                    endpoint_url,
                    region: raw.region.map(Spanned::into_inner),
                    access_key_id: access_key_id?,
                    secret_access_key: secret_access_key?,
                    profile: raw.profile.map(Spanned::into_inner),
                    force_path_style: raw
                        .force_path_style
                        .map(Spanned::into_inner)
                        .unwrap_or(false),
                    prefix: raw.prefix.map(Spanned::into_inner).unwrap_or_default(),
                    part_size: part_size?,
                    checksums: checksums?,
                    spool_dir: self.spool_dir(&raw.spool_dir, &raw.provider)?,
                }
            }
            "azure" => {
                self.only_keys(
                    provider_name,
                    &present,
                    &[
                        "connection_string",
                        "account",
                        "access_key",
                        "endpoint_url",
                        "endpoint",
                        "prefix",
                        "spool_dir",
                    ],
                );
                let account = raw
                    .account
                    .map(Spanned::into_inner)
                    .or_else(|| endpoint.as_ref().and_then(|(p, _)| p.account.clone()));
                if raw.connection_string.is_none()
                    && (account.is_none() || raw.access_key.is_none())
                {
                    self.error(
                        &table,
                        "an azure store needs `connection_string`, or `account` and `access_key`",
                    );
                }
                let connection_string = self.optional_secret(&raw.connection_string);
                let access_key = self.optional_secret(&raw.access_key);
                StoreProviderConfig::Azure {
                    connection_string: connection_string?,
                    account,
                    access_key: access_key?,
                    endpoint_url: raw.endpoint_url.map(Spanned::into_inner),
                    prefix: raw.prefix.map(Spanned::into_inner).unwrap_or_default(),
                    spool_dir: self.spool_dir(&raw.spool_dir, &raw.provider)?,
                }
            }
            other => {
                self.error(
                    &raw.provider.span(),
                    format!(
                        "unknown store provider `{other}`, expected one of: filesystem, s3, azure"
                    ),
                );
                return None;
            }
        };
        Some(StoreConfig {
            buckets: buckets.into_iter().map(Spanned::into_inner).collect(),
            read_only: raw.read_only.unwrap_or(false),
            max_object_size: max_object_size?,
            access,
            provider,
        })
    }
}

/// An OSMO-style data endpoint: `s3://bucket`, `gs://bucket`,
/// `tos://host/bucket`, `azure://account/container`.
struct Endpoint {
    scheme: String,
    bucket: String,
    endpoint_url: Option<String>,
    account: Option<String>,
}

fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let invalid = || {
        format!(
            "invalid endpoint `{text}`, expected s3://bucket, gs://bucket, tos://host/bucket or azure://account/container"
        )
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(invalid)?;
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let endpoint = |bucket: &str, url: Option<String>, account: Option<String>| Endpoint {
        scheme: scheme.to_string(),
        bucket: bucket.to_string(),
        endpoint_url: url,
        account,
    };
    match (scheme, parts.as_slice()) {
        ("s3", [bucket]) if !bucket.is_empty() => Ok(endpoint(bucket, None, None)),
        ("gs", [bucket]) if !bucket.is_empty() => Ok(endpoint(
            bucket,
            Some("https://storage.googleapis.com".to_string()),
            None,
        )),
        ("tos", [host, bucket]) if !host.is_empty() && !bucket.is_empty() => {
            Ok(endpoint(bucket, Some(format!("https://{host}")), None))
        }
        ("azure", [account, container]) if !account.is_empty() && !container.is_empty() => {
            Ok(endpoint(container, None, Some(account.to_string())))
        }
        _ => Err(invalid()),
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

/// Overwrites every string in a parsed TOML value before it is dropped.
fn wipe_toml(value: &mut toml::Value) {
    use zeroize::Zeroize;
    match value {
        toml::Value::String(text) => text.zeroize(),
        toml::Value::Array(items) => items.iter_mut().for_each(wipe_toml),
        toml::Value::Table(table) => table.iter_mut().for_each(|(_, v)| wipe_toml(v)),
        _ => {}
    }
}

fn strip_one_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("c.toml"), text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

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
                "c.toml:2:12: unknown registry provider `magic`, expected one of: ecr, static, helper, none, thin-edge"
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
    fn keys_of_another_provider_are_refused() {
        let e = errors(
            "[registries.x]\nprovider = \"none\"\nregistry = \"r\"\ncommand = [\"/bin/true\"]\n",
        );
        assert_eq!(
            e,
            ["c.toml:4:11: key `command` is not valid for provider `none`"]
        );
    }

    #[test]
    fn duplicate_buckets_and_bad_names_are_refused() {
        let e = errors(
            "[stores.a]\nprovider = \"filesystem\"\nroot = \"/a\"\nbuckets = [\"b\"]\n\
             [stores.c]\nprovider = \"filesystem\"\nroot = \"/c\"\nbuckets = [\"b\", \"no/slash\"]\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("c.toml:8:12: duplicate bucket `b`"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("c.toml:8:17: invalid bucket name `no/slash`"),
            "{e:?}"
        );
    }

    #[test]
    fn missing_secret_sources_are_refused() {
        let e = errors(
            "[secrets.g]\na = { file = \"/nonexistent/credfs-secret\" }\nb = { env = \"CREDFS_TEST_UNSET_VAR\" }\nc = { path = \"x\" }\n",
        );
        assert_eq!(e.len(), 1, "a parse error stops at the first: {e:?}");
        assert!(
            e[0].contains("unknown key `path` in a secret value"),
            "{e:?}"
        );
        let e = errors(
            "[secrets.g]\na = { file = \"/nonexistent/credfs-secret\" }\nb = { env = \"CREDFS_TEST_UNSET_VAR\" }\n",
        );
        assert!(
            e[0].starts_with("c.toml:2:5: cannot read secret file `/nonexistent/credfs-secret`"),
            "{e:?}"
        );
        assert_eq!(
            e[1],
            "c.toml:3:5: environment variable `CREDFS_TEST_UNSET_VAR` is not set"
        );
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

    #[test]
    fn a_helper_env_table_takes_every_secret_form() {
        let dir = tempfile_dir("helper-env");
        fs::write(dir.join("token"), "from-file\n").unwrap();
        // SAFETY: a variable only this test reads.
        unsafe { std::env::set_var("CREDFS_TEST_HELPER_ENV", "from-env") };
        let text = "[registries.h]\nprovider = \"helper\"\nregistry = \"r\"\ncommand = [\"/bin/h\"]\n\
                    env = { PLAIN = \"literal\", FROM_ENV = { env = \"CREDFS_TEST_HELPER_ENV\" }, _FILE1 = { file = \"token\" } }\n";
        let config = parse(&dir.join("c.toml"), text).expect("valid");
        let RegistryProviderConfig::Helper { env, .. } = &config.registries["h"].provider else {
            panic!("helper");
        };
        let shown: Vec<(&str, &[u8])> = env.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        assert_eq!(
            shown,
            [
                ("FROM_ENV", &b"from-env"[..]),
                ("PLAIN", &b"literal"[..]),
                ("_FILE1", &b"from-file"[..])
            ]
        );
        let mut changed = text.replace("literal", "other");
        let other = parse(&dir.join("c.toml"), &changed).expect("valid");
        assert_ne!(
            config.registries["h"], other.registries["h"],
            "a changed env value is a changed registry"
        );
        changed = text.replace("PLAIN", "RENAMED");
        let other = parse(&dir.join("c.toml"), &changed).expect("valid");
        assert_ne!(config.registries["h"], other.registries["h"]);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_helper_env_tables_are_refused_with_their_place() {
        let helper =
            "[registries.h]\nprovider = \"helper\"\nregistry = \"r\"\ncommand = [\"/bin/h\"]\n";
        let e = errors(&format!(
            "{helper}env = {{ 1BAD = \"v\", \"A-B\" = \"v\", \"\" = \"v\", OK = {{ env = \"CREDFS_TEST_UNSET_VAR\" }} }}\n"
        ));
        assert_eq!(
            e,
            [
                "c.toml:5:9: invalid environment variable name `1BAD`: use letters, digits and `_`, not starting with a digit",
                "c.toml:5:21: invalid environment variable name `A-B`: use letters, digits and `_`, not starting with a digit",
                "c.toml:5:34: an environment variable name cannot be empty",
                "c.toml:5:49: environment variable `CREDFS_TEST_UNSET_VAR` is not set",
            ]
        );
        let e = errors(&format!("{helper}env = {{ PIN = 482913 }}\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("c.toml:5:15: a secret value must be a string"),
            "{e:?}"
        );
        assert!(!e[0].contains("482913"), "{e:?}");
        let e = errors(&format!("{helper}env = {{ X = {{ path = \"/p\" }} }}\n"));
        assert!(
            e[0].contains("unknown key `path` in a secret value"),
            "{e:?}"
        );
        let e =
            errors("[registries.x]\nprovider = \"none\"\nregistry = \"r\"\nenv = { A = \"b\" }\n");
        assert_eq!(
            e,
            ["c.toml:4:7: key `env` is not valid for provider `none`"]
        );
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("credfs-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn secret_files_lose_one_trailing_newline() {
        assert_eq!(strip_one_newline(b"tok\r\n".to_vec()), b"tok");
        assert_eq!(strip_one_newline(b"tok\n\n".to_vec()), b"tok\n");
        assert_eq!(strip_one_newline(b"tok".to_vec()), b"tok");
    }

    #[test]
    fn helper_programs_need_absolute_paths() {
        let e = errors(
            "[registries.h]\nprovider = \"helper\"\nregistry = \"r\"\ncommand = [\"helper\"]\n",
        );
        assert_eq!(
            e,
            ["c.toml:4:11: helper program `helper` must be an absolute path"]
        );
    }

    #[test]
    fn thin_edge_credentials_become_static_registries() {
        let dir = std::env::temp_dir().join(format!("credfs-te-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("credentials.toml"),
            "[registry1]\nrepo = \"ghcr.io/org\"\nusername = \"te\"\npassword = \"te-pass\"\n",
        )
        .unwrap();
        // SAFETY: a variable only this test reads.
        unsafe {
            std::env::set_var("CONTAINER_REGISTRY7_REPO", "docker.io");
            std::env::set_var("CONTAINER_REGISTRY7_USERNAME", "envuser");
            std::env::set_var("CONTAINER_REGISTRY7_PASSWORD", "env-pass");
        }
        let text = "[registries.fromfile]\nprovider = \"thin-edge\"\ncredentials_file = \"credentials.toml\"\nsection = \"registry1\"\n\
                    [registries.fromenv]\nprovider = \"thin-edge\"\nenv_index = 7\n";
        let config = parse(&dir.join("c.toml"), text).expect("valid");
        let RegistryProviderConfig::Static {
            registry,
            username,
            password,
        } = &config.registries["fromfile"].provider
        else {
            panic!("static");
        };
        assert_eq!(
            (registry.as_str(), username.expose(), password.expose()),
            ("ghcr.io/org", &b"te"[..], &b"te-pass"[..])
        );
        assert_eq!(
            config.registries["fromenv"].provider.registry(),
            Some("docker.io")
        );
        let missing = parse(
            &dir.join("c.toml"),
            "[registries.x]\nprovider = \"thin-edge\"\ncredentials_file = \"credentials.toml\"\nsection = \"registry9\"\n",
        )
        .unwrap_err();
        assert!(
            missing.to_string().contains(
                "c.toml:4:11: `[registry9]` of `credentials.toml` needs repo, username and password"
            ),
            "{missing}"
        );
        let unset = parse(
            &dir.join("c.toml"),
            "[registries.x]\nprovider = \"thin-edge\"\nenv_index = 99\n",
        )
        .unwrap_err();
        assert!(
            unset
                .to_string()
                .contains("`CONTAINER_REGISTRY99_REPO` is not set"),
            "{unset}"
        );
        let _ = fs::remove_dir_all(dir);
    }
}
