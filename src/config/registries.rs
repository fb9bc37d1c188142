//! `[registries.*]`: one table each, checked against the keys of its
//! provider.

use super::checker::Checker;
use super::raw::{Named, RawRegistry, RawSecret};
use super::values::check_env_name;
use super::{
    Access, EcrConfig, HelperConfig, HelperProtocol, NoneConfig, RegistryConfig,
    RegistryProviderConfig, StaticConfig,
};
use crate::secret::Secret;
use crate::trust;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HELPER_TTL: Duration = Duration::from_secs(3600);

impl Checker<'_> {
    pub(super) fn registry_host(&mut self, value: &Spanned<String>) -> Option<String> {
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

    pub(super) fn registry(&mut self, entry: Spanned<RawRegistry>) -> Option<RegistryConfig> {
        let table = entry.span();
        let raw = entry.into_inner();
        let keys = raw.provider_keys();
        let access = Access {
            uid: raw.uid,
            gid: raw.gid,
            mode: self.mode(&raw.mode),
        };
        let provider_name = raw.provider.get_ref().clone();
        let provider = match provider_name.as_str() {
            "ecr" => self.ecr(&table, raw).map(RegistryProviderConfig::Ecr),
            "gcp" => self.gcp(&table, &raw).map(RegistryProviderConfig::Gcp),
            "acr" => self.acr(&table, &raw).map(RegistryProviderConfig::Acr),
            "static" => self
                .static_registry(&table, &raw)
                .map(RegistryProviderConfig::Static),
            "helper" => self.helper(&table, raw).map(RegistryProviderConfig::Helper),
            "none" => self
                .none_registry(&table, &raw)
                .map(RegistryProviderConfig::None),
            "thin-edge" => self
                .thin_edge(&table, &raw)
                .map(RegistryProviderConfig::Static),
            other => {
                self.error(
                    &raw.provider.span(),
                    format!("unknown registry provider `{other}`, expected one of: ecr, gcp, acr, static, helper, none, thin-edge"),
                );
                return None;
            }
        };
        self.only_keys(&provider_name, &keys);
        Some(RegistryConfig {
            access,
            provider: provider?,
        })
    }

    /// The `registry` key that every provider but `ecr` and `thin-edge`
    /// requires.
    pub(super) fn required_registry(
        &mut self,
        table: &Range<usize>,
        raw: &RawRegistry,
    ) -> Option<String> {
        let registry = self.required(table, "registry", &raw.registry);
        registry.and_then(|r| self.registry_host(r))
    }

    fn ecr(&mut self, table: &Range<usize>, raw: RawRegistry) -> Option<EcrConfig> {
        let region = self.required(table, "region", &raw.region);
        let registry = raw.registry.as_ref().map(|r| self.registry_host(r));
        Some(EcrConfig {
            region: region?.get_ref().clone(),
            registry: registry.map_or(Some(None), |r| r.map(Some))?,
            registry_id: raw.registry_id.map(Spanned::into_inner),
            profile: raw.profile.map(Spanned::into_inner),
            endpoint_url: raw.endpoint_url.map(Spanned::into_inner),
        })
    }

    fn static_registry(&mut self, table: &Range<usize>, raw: &RawRegistry) -> Option<StaticConfig> {
        let registry = self.required_registry(table, raw);
        let username = self.required(table, "username", &raw.username);
        let username = username.and_then(|u| self.secret(u));
        let password = self.required(table, "password", &raw.password);
        let password = password.and_then(|p| self.secret(p));
        Some(StaticConfig {
            registry: registry?,
            username: username?,
            password: password?,
        })
    }

    fn helper(&mut self, table: &Range<usize>, raw: RawRegistry) -> Option<HelperConfig> {
        let registry = self.required_registry(table, &raw);
        let command = self.required(table, "command", &raw.command).cloned();
        let command = command.and_then(|c| self.helper_command(c));
        let protocol = match raw.protocol.as_ref() {
            None => Some(HelperProtocol::ThinEdge),
            Some(p) => {
                match p.get_ref().as_str() {
                    "thin-edge" => Some(HelperProtocol::ThinEdge),
                    "docker" => Some(HelperProtocol::Docker),
                    other => {
                        self.error(
                        &p.span(),
                        format!("unknown helper protocol `{other}`, expected `thin-edge` or `docker`"),
                    );
                        None
                    }
                }
            }
        };
        let timeout = self.duration(&raw.timeout, DEFAULT_HELPER_TIMEOUT);
        let ttl = self.duration(&raw.ttl, DEFAULT_HELPER_TTL);
        let env = self.helper_env(raw.env.as_ref());
        Some(HelperConfig {
            registry: registry?,
            command: command?,
            protocol: protocol?,
            timeout: timeout?,
            ttl: ttl?,
            env: env?,
        })
    }

    fn none_registry(&mut self, table: &Range<usize>, raw: &RawRegistry) -> Option<NoneConfig> {
        Some(NoneConfig {
            registry: self.required_registry(table, raw)?,
        })
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
}

#[cfg(test)]
mod tests {
    use super::super::checker::testing::{errors, tempfile_dir};
    use super::super::parse;
    use super::*;
    use std::fs;

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
    fn a_helper_env_table_takes_every_secret_form() {
        let dir = tempfile_dir("helper-env");
        fs::write(dir.join("token"), "from-file\n").unwrap();
        // SAFETY: a variable only this test reads.
        unsafe { std::env::set_var("CREDFS_TEST_HELPER_ENV", "from-env") };
        let text = "[registries.h]\nprovider = \"helper\"\nregistry = \"r\"\ncommand = [\"/bin/h\"]\n\
                    env = { PLAIN = \"literal\", FROM_ENV = { env = \"CREDFS_TEST_HELPER_ENV\" }, _FILE1 = { file = \"token\" } }\n";
        let config = parse(&dir.join("c.toml"), text).expect("valid");
        let RegistryProviderConfig::Helper(HelperConfig { env, .. }) =
            &config.registries["h"].provider
        else {
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
}
