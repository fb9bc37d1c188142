//! `provider = "thin-edge"`: thin-edge's own registry credentials, read once
//! at load and served as a `static` registry.

use super::StaticConfig;
use super::checker::Checker;
use super::raw::RawRegistry;
use crate::secret::Secret;
use crate::trust;
use std::ops::Range;
use toml::Spanned;

impl Checker<'_> {
    /// thin-edge's own credentials, read once at load: a `[registryN]`
    /// section of its credentials.toml, or its CONTAINER_REGISTRYn_*
    /// variables. They serve as a `static` registry.
    pub(super) fn thin_edge(
        &mut self,
        table: &Range<usize>,
        raw: &RawRegistry,
    ) -> Option<StaticConfig> {
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
        Some(StaticConfig {
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
        let bytes = match trust::read_file(&path) {
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

#[cfg(test)]
mod tests {
    use super::super::{RegistryProviderConfig, parse};
    use super::*;
    use std::fs;

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
        let RegistryProviderConfig::Static(StaticConfig {
            registry,
            username,
            password,
        }) = &config.registries["fromfile"].provider
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
