//! The error collector every part of validation reports to, with the
//! checks they share: required and per-provider keys, modes, names,
//! durations, sizes, directories and secrets.

use super::raw::{ProviderKey, RawSecret};
use super::values::{parse_duration, parse_mode, parse_size};
use crate::names::check_name;
use crate::secret::Secret;
use crate::trust;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

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

pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    pub(super) errors: Vec<ConfigError>,
    /// Files read besides the config.
    pub(super) sources: &'a mut Vec<PathBuf>,
}

impl Checker<'_> {
    pub(super) fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
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

    pub(super) fn check<T>(&mut self, span: &Range<usize>, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.error(span, message)).ok()
    }

    pub(super) fn mode(&mut self, value: &Option<Spanned<String>>) -> Option<u32> {
        let value = value.as_ref()?;
        self.check(&value.span(), parse_mode(value.get_ref()))
    }

    pub(super) fn name(&mut self, what: &str, name: &Spanned<String>) {
        let result = check_name(what, name.get_ref());
        self.check(&name.span(), result);
    }

    pub(super) fn secret(&mut self, value: &Spanned<RawSecret>) -> Option<Secret> {
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
                match trust::read_file(&path) {
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
    pub(super) fn source(&mut self, file: &str) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("/"));
        let path = base.join(file);
        self.sources.push(path.clone());
        path
    }

    pub(super) fn required<'v, T>(
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

    /// Reports keys the provider does not use, so a typo or a key meant for
    /// another provider is not silently ignored.
    pub(super) fn only_keys(&mut self, provider: &str, keys: &[ProviderKey]) {
        for key in keys.iter().filter(|k| !k.providers.contains(&provider)) {
            self.error(
                &key.span,
                format!("key `{}` is not valid for provider `{provider}`", key.name),
            );
        }
    }

    pub(super) fn duration(
        &mut self,
        value: &Option<Spanned<String>>,
        default: Duration,
    ) -> Option<Duration> {
        match value {
            None => Some(default),
            Some(v) => self.check(&v.span(), parse_duration(v.get_ref())),
        }
    }

    pub(super) fn size(&mut self, value: &Option<Spanned<String>>) -> Option<Option<u64>> {
        match value {
            None => Some(None),
            Some(v) => self.check(&v.span(), parse_size(v.get_ref())).map(Some),
        }
    }

    pub(super) fn optional_secret(
        &mut self,
        value: &Option<Spanned<RawSecret>>,
    ) -> Option<Option<Secret>> {
        match value {
            None => Some(None),
            Some(v) => self.secret(v).map(Some),
        }
    }

    /// Refuses a directory credfs writes into unless `trust` does not.
    pub(super) fn trusted_dir(
        &mut self,
        what: &str,
        path: &Path,
        span: &Range<usize>,
    ) -> Option<()> {
        let checked = trust::check_dir(path).map_err(|e| e.describe(what, path));
        self.check(span, checked)
    }
}

pub(super) fn strip_one_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
    bytes
}

#[cfg(test)]
pub(super) mod testing {
    use super::super::parse;
    use std::path::{Path, PathBuf};

    /// The errors `parse` reports for `text`, as the CLI prints them.
    pub fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("c.toml"), text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    pub fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("credfs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::testing::errors;
    use super::*;

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
    fn secret_files_lose_one_trailing_newline() {
        assert_eq!(strip_one_newline(b"tok\r\n".to_vec()), b"tok");
        assert_eq!(strip_one_newline(b"tok\n\n".to_vec()), b"tok\n");
        assert_eq!(strip_one_newline(b"tok".to_vec()), b"tok");
    }
}
