//! `helper`: runs a credential-helper program (argv, no shell) with a
//! timeout. Two protocols: thin-edge's `registry-credentials get IMAGE
//! [--refresh]` printing `{"username","password"[,"expires_at"]}`, and
//! Docker's `docker-credential-X get` reading the server URL on stdin and
//! printing `{"ServerURL","Username","Secret"}`. Errors carry the helper's
//! stderr, cut short, and never its stdout (it may hold the secret).

use super::{Credential, RegistryProvider};
use crate::config::HelperProtocol;
use crate::error::{Error, Result};
use crate::secret::Secret;
use async_trait::async_trait;
use serde::Deserialize;
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

/// How much of a helper's stderr goes into errors and status.json.
const STDERR_SHOWN: usize = 512;

pub struct HelperProvider {
    registry: String,
    command: Vec<String>,
    protocol: HelperProtocol,
    timeout: Duration,
    ttl: Duration,
}

#[derive(Deserialize)]
struct ThinEdgeAnswer {
    username: String,
    password: String,
    expires_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerAnswer {
    username: String,
    secret: String,
}

impl HelperProvider {
    pub fn new(
        registry: &str,
        command: &[String],
        protocol: HelperProtocol,
        timeout: Duration,
        ttl: Duration,
    ) -> Self {
        HelperProvider {
            registry: registry.to_string(),
            command: command.to_vec(),
            protocol,
            timeout,
            ttl,
        }
    }

    fn program(&self) -> &str {
        self.command.first().map_or("", String::as_str)
    }

    fn error(&self, what: impl std::fmt::Display) -> Error {
        Error::provider(format!("helper `{}` {what}", self.program()))
    }

    async fn run(&self, refresh: bool) -> Result<Zeroizing<Vec<u8>>> {
        let mut command = tokio::process::Command::new(self.program());
        command
            .args(&self.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if refresh && self.protocol == HelperProtocol::ThinEdge {
            command.arg("--refresh");
        }
        let mut child = command
            .spawn()
            .map_err(|e| self.error(format_args!("could not start: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            if self.protocol == HelperProtocol::Docker {
                // A helper that exits without reading stdin is not an error here.
                let _ = stdin.write_all(self.registry.as_bytes()).await;
            }
            drop(stdin);
        }
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                self.error(format_args!(
                    "timed out after {}",
                    humantime::format_duration(self.timeout)
                ))
            })?
            .map_err(|e| self.error(format_args!("failed: {e}")))?;
        let stdout = Zeroizing::new(output.stdout);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let mut shown: String = stderr.trim().chars().take(STDERR_SHOWN).collect();
            if stderr.trim().len() > shown.len() {
                shown.push('…');
            }
            return Err(self.error(format_args!("exited with {}: {shown}", output.status)));
        }
        Ok(stdout)
    }

    /// Parses the answer; an error names where the JSON is wrong but never
    /// quotes it.
    fn parse<T: for<'de> Deserialize<'de>>(&self, stdout: &[u8]) -> Result<T> {
        serde_json::from_slice(stdout).map_err(|e| {
            let kind = match e.classify() {
                serde_json::error::Category::Data => "JSON of the wrong shape",
                _ => "invalid JSON",
            };
            self.error(format_args!(
                "printed {kind} (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }

    fn expiry(&self, expires_at: Option<&str>) -> Result<SystemTime> {
        let Some(text) = expires_at.filter(|t| !t.is_empty()) else {
            return Ok(SystemTime::now() + self.ttl);
        };
        let at = humantime::parse_rfc3339_weak(text).map_err(|_| {
            self.error(format_args!(
                "printed an expires_at that is not RFC 3339: {text}"
            ))
        })?;
        if at <= SystemTime::now() {
            return Err(self.error(format_args!("returned a credential that expired at {text}")));
        }
        Ok(at)
    }
}

#[async_trait]
impl RegistryProvider for HelperProvider {
    async fn fetch(&self, refresh: bool) -> Result<Credential> {
        let stdout = self.run(refresh).await?;
        let (username, password, expires_at) = match self.protocol {
            HelperProtocol::ThinEdge => {
                let answer: ThinEdgeAnswer = self.parse(&stdout)?;
                let expires_at = self.expiry(answer.expires_at.as_deref())?;
                (answer.username, answer.password, expires_at)
            }
            HelperProtocol::Docker => {
                let answer: DockerAnswer = self.parse(&stdout)?;
                (answer.username, answer.secret, self.expiry(None)?)
            }
        };
        let password = Secret::from(password);
        Ok(Credential {
            registry: self.registry.clone(),
            username: Secret::from(username),
            token: password.clone(),
            password,
            expires_at: Some(expires_at),
        })
    }
}
