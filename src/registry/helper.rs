//! `helper`: runs a credential-helper program (argv, no shell) with a
//! timeout. Two protocols: thin-edge's `registry-credentials get IMAGE
//! [--refresh]` printing `{"username","password"[,"expires_at"]}`, and
//! Docker's `docker-credential-X get` reading the server URL on stdin and
//! printing `{"ServerURL","Username","Secret"}`. Errors carry the helper's
//! stderr, cut short, and never anything from its stdout (it holds the
//! secret).
//!
//! A helper is a program of somebody else's, so it gets nothing it was not
//! given: a clean environment (PATH, HOME=/nonexistent, LANG and the
//! registry's `env` table), its own process group, which is killed once the
//! helper exits or times out, and at most 1 MiB of output on each stream.

use super::{Credential, RegistryProvider};
use crate::config::{HelperConfig, HelperProtocol};
use crate::error::{Error, Result};
use crate::secret::Secret;
use async_trait::async_trait;
use serde::Deserialize;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::time::Instant;
use zeroize::{Zeroize, Zeroizing};

/// How much of a helper's stderr goes into errors and status.json.
const STDERR_SHOWN: usize = 512;
/// The most a helper may print on stdout, and on stderr; a credential is a
/// few KiB at most, so more is a broken or hostile helper.
const OUTPUT_LIMIT: usize = 1 << 20;
/// Once the helper has exited and its group is killed, the pipes reach EOF
/// at once, unless a process that left the group (setsid) holds them: do
/// not wait on such a process.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// A SIGKILLed process exits at once; if it does not, tokio's background
/// reaper takes it over rather than a reader waiting on it.
const REAP_GRACE: Duration = Duration::from_secs(5);
/// PATH for helpers when the daemon has none (as systemd's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct HelperProvider {
    config: HelperConfig,
}

/// A string parsed from the helper's stdout, wiped when dropped: on the
/// error paths of deserialization too, where serde drops the fields it
/// already parsed.
#[derive(Deserialize, Default)]
#[serde(transparent)]
struct Wiped(String);

impl Wiped {
    fn take(&mut self) -> String {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[derive(Deserialize)]
struct ThinEdgeAnswer {
    username: Wiped,
    password: Wiped,
    expires_at: Option<Wiped>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerAnswer {
    username: Wiped,
    secret: Wiped,
}

/// How the wait for a helper ended.
enum Ended {
    Exited,
    TimedOut,
    /// Too much output, or a pipe that could not be read.
    Failed(String),
}

impl HelperProvider {
    pub fn new(config: &HelperConfig) -> Self {
        HelperProvider {
            config: config.clone(),
        }
    }

    fn program(&self) -> &str {
        self.config.command.first().map_or("", String::as_str)
    }

    fn error(&self, what: impl std::fmt::Display) -> Error {
        Error::provider(format!("helper `{}` {what}", self.program()))
    }

    fn command(&self, refresh: bool) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.program());
        command.args(self.config.command.iter().skip(1));
        if refresh && self.config.protocol == HelperProtocol::ThinEdge {
            command.arg("--refresh");
        }
        // The daemon's environment holds the `{ env = … }` secrets of every
        // entry and the cloud credentials of the default chain.
        command.env_clear();
        command.env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        );
        command.env("HOME", "/nonexistent");
        if let Some(lang) = std::env::var_os("LANG") {
            command.env("LANG", lang);
        }
        for (name, value) in &self.config.env {
            command.env(name, OsStr::from_bytes(value.expose()));
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let daemon = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and makes only
        // async-signal-safe calls (prctl, getppid); it allocates nothing.
        unsafe {
            command.pre_exec(move || die_with_the_daemon(daemon));
        }
        command
    }

    async fn run(&self, refresh: bool) -> Result<Zeroizing<Vec<u8>>> {
        // Checked at load too; again here, since the program may have
        // appeared or changed since.
        let program = std::path::Path::new(self.program());
        crate::trust::check_program(program).map_err(|e| {
            self.error(format_args!(
                "refused: {}",
                e.describe("helper program", program)
            ))
        })?;
        let mut child = self
            .command(refresh)
            .spawn()
            .map_err(|e| self.error(format_args!("could not start: {e}")))?;
        let pid = child
            .id()
            .and_then(|id| libc::pid_t::try_from(id).ok())
            .ok_or_else(|| self.error("exited before it could be watched"))?;
        // From here on, every way out (a `?`, a cancelled fetch) kills the
        // group: dropping `group` does.
        let mut group = Group {
            id: pid,
            reaped: false,
        };
        let exit = ExitWatch::new(pid);
        let stdin = child.stdin.take();
        let (stdout_pipe, stderr_pipe) = (child.stdout.take(), child.stderr.take());
        let mut stdout = Zeroizing::new(Vec::new());
        let mut stderr = Zeroizing::new(Vec::new());
        let deadline = Instant::now() + self.config.timeout;
        let ended = {
            let read = async {
                tokio::try_join!(
                    read_capped(stdout_pipe, &mut stdout, "stdout"),
                    read_capped(stderr_pipe, &mut stderr, "stderr"),
                )
            };
            let io = async { tokio::join!(self.feed(stdin), read).1 };
            tokio::pin!(io);
            let mut pipes_closed = false;
            loop {
                tokio::select! {
                    result = &mut io, if !pipes_closed => match result {
                        Ok(_) => pipes_closed = true,
                        Err(message) => break Ended::Failed(message),
                    },
                    () = exit.exited() => {
                        // What the helper left behind may hold the pipes
                        // open; it goes with the helper. The helper is not
                        // reaped yet, so the group id is still its own.
                        group.kill();
                        if pipes_closed {
                            break Ended::Exited;
                        }
                        match tokio::time::timeout(DRAIN_GRACE, &mut io).await {
                            Ok(Err(message)) => break Ended::Failed(message),
                            Ok(Ok(_)) | Err(_) => break Ended::Exited,
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => break Ended::TimedOut,
                }
            }
        };
        let status = reap(&mut child, &mut group).await;
        match ended {
            Ended::Exited => {}
            Ended::TimedOut => {
                return Err(self.error(format_args!(
                    "timed out after {}",
                    humantime::format_duration(self.config.timeout)
                )));
            }
            Ended::Failed(message) => return Err(self.error(message)),
        }
        let status = status.map_err(|e| self.error(format_args!("could not be reaped: {e}")))?;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            let mut shown: String = stderr.trim().chars().take(STDERR_SHOWN).collect();
            if stderr.trim().len() > shown.len() {
                shown.push('…');
            }
            return Err(self.error(format_args!("exited with {status}: {shown}")));
        }
        Ok(stdout)
    }

    /// Docker's protocol gives the server URL on stdin; closing stdin tells
    /// either kind of helper that nothing more comes.
    async fn feed(&self, stdin: Option<ChildStdin>) {
        if let Some(mut stdin) = stdin
            && self.config.protocol == HelperProtocol::Docker
        {
            // A helper that exits without reading stdin is not an error here.
            let _ = stdin.write_all(self.config.registry.as_bytes()).await;
        }
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

    /// The expiry the helper printed, or the ttl. Its text came from stdout,
    /// so errors describe it without quoting it.
    fn expiry(&self, expires_at: Option<&str>) -> Result<SystemTime> {
        let Some(text) = expires_at.filter(|t| !t.is_empty()) else {
            return Ok(crate::status::after(SystemTime::now(), self.config.ttl));
        };
        let at = humantime::parse_rfc3339_weak(text)
            .map_err(|_| self.error("printed an expires_at that is not an RFC 3339 time"))?;
        if at <= SystemTime::now() {
            return Err(self.error("returned a credential whose expires_at has already passed"));
        }
        Ok(at)
    }
}

/// Runs in the forked helper before exec. The helper is SIGKILLed when the
/// daemon dies, so a crashed daemon leaves no helper behind. The signal
/// follows the thread that forked: tokio's workers, which spawn helpers,
/// live as long as the daemon's runtime.
fn die_with_the_daemon(daemon: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe and write no memory
    // of this process.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        // The daemon died between fork and prctl: nobody will send the signal.
        if libc::getppid() != daemon {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// The helper's process group, whose id is the helper's pid. Killing it by
/// id is safe only while the helper is not reaped: until then no other
/// group can take that id.
struct Group {
    id: libc::pid_t,
    reaped: bool,
}

impl Group {
    fn kill(&self) {
        if !self.reaped {
            // SAFETY: kill has no memory-safety preconditions; a group that
            // is already gone gives ESRCH, which changes nothing.
            unsafe { libc::kill(-self.id, libc::SIGKILL) };
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills what is left of the helper's group and reaps the helper, then any
/// member of the group that became the daemon's child.
async fn reap(child: &mut Child, group: &mut Group) -> io::Result<ExitStatus> {
    group.kill();
    let status = tokio::time::timeout(REAP_GRACE, child.wait())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "still running after SIGKILL"))??;
    group.reaped = true;
    reap_orphans(group.id).await;
    Ok(status)
}

/// When the daemon is PID 1 of a container (or a subreaper), the killed
/// descendants of a helper become its children, and tokio reaps only the
/// children it spawned: reap the group's, so none stays a zombie. Elsewhere
/// they are init's, and waitpid answers ECHILD at once.
async fn reap_orphans(group: libc::pid_t) {
    let deadline = Instant::now() + REAP_GRACE;
    loop {
        // SAFETY: no status is stored; WNOHANG never blocks. Only members
        // of the helper's group can match: its leader, the one child tokio
        // tracked there, is already reaped.
        let reaped = unsafe { libc::waitpid(-group, std::ptr::null_mut(), libc::WNOHANG) };
        if reaped > 0 {
            continue;
        }
        // -1 (ECHILD): none of the group is ours. 0: some are still dying.
        if reaped < 0 || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Tells when the helper exited without reaping it (tokio reaps it later),
/// so that its group can still be killed by id.
enum ExitWatch {
    Pidfd(AsyncFd<OwnedFd>, libc::pid_t),
    /// No pidfd (an old kernel, a seccomp filter): poll with WNOWAIT.
    Poll(libc::pid_t),
}

impl ExitWatch {
    fn new(pid: libc::pid_t) -> Self {
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor or -1; it touches no memory.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if let Ok(fd) = RawFd::try_from(fd)
            && fd >= 0
        {
            // SAFETY: the descriptor was just created and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays
            // open and the same for as long as it is registered.
            let registered =
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
            if let Ok(fd) = registered {
                return ExitWatch::Pidfd(fd, pid);
            }
        }
        ExitWatch::Poll(pid)
    }

    async fn exited(&self) {
        let pid = match self {
            // A pidfd is readable once its process has exited; if polling
            // it fails, fall back to asking.
            ExitWatch::Pidfd(fd, pid) => match fd.readable().await {
                Ok(_) => return,
                Err(_) => *pid,
            },
            ExitWatch::Poll(pid) => *pid,
        };
        while !has_exited(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn has_exited(pid: libc::pid_t) -> bool {
    // SAFETY: siginfo_t is plain data for which all zeroes is valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only into `info`; WNOWAIT leaves the child
    // unreaped, WNOHANG returns at once.
    let result = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (or left it zeroed: si_pid 0 means
    // "still running").
    result != 0 || unsafe { info.si_pid() } != 0
}

/// Reads `pipe` to EOF into `into`, refusing more than OUTPUT_LIMIT bytes.
async fn read_capped(
    pipe: Option<impl AsyncRead + Unpin>,
    into: &mut Zeroizing<Vec<u8>>,
    stream: &str,
) -> std::result::Result<(), String> {
    let Some(mut pipe) = pipe else {
        return Ok(());
    };
    let mut chunk = Zeroizing::new([0u8; 8192]);
    loop {
        let n = pipe
            .read(&mut chunk[..])
            .await
            .map_err(|e| format!("could not be read on {stream}: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        if into.len() + n > OUTPUT_LIMIT {
            return Err(format!("printed more than 1 MiB on {stream}"));
        }
        append_wiped(into, &chunk[..n]);
    }
}

/// Appends like `extend_from_slice`, but wipes the old allocation when the
/// buffer grows, where a plain Vec would free it with the bytes still in it.
fn append_wiped(buffer: &mut Zeroizing<Vec<u8>>, bytes: &[u8]) {
    if buffer.capacity() - buffer.len() < bytes.len() {
        let wanted = (buffer.len() + bytes.len()).max(buffer.capacity() * 2);
        let mut grown = Zeroizing::new(Vec::with_capacity(wanted));
        grown.extend_from_slice(buffer);
        // `grown` takes the old allocation and wipes it as it drops.
        std::mem::swap(buffer, &mut grown);
    }
    buffer.extend_from_slice(bytes);
}

#[async_trait]
impl RegistryProvider for HelperProvider {
    async fn fetch(&self, refresh: bool) -> Result<Credential> {
        let stdout = self.run(refresh).await?;
        let (username, password, expires_at) = match self.config.protocol {
            HelperProtocol::ThinEdge => {
                let mut answer: ThinEdgeAnswer = self.parse(&stdout)?;
                let expires_at = self.expiry(answer.expires_at.as_ref().map(|e| e.0.as_str()))?;
                (answer.username.take(), answer.password.take(), expires_at)
            }
            HelperProtocol::Docker => {
                let mut answer: DockerAnswer = self.parse(&stdout)?;
                let expires_at = self.expiry(None)?;
                (answer.username.take(), answer.secret.take(), expires_at)
            }
        };
        let password = Secret::from(password);
        Ok(Credential {
            registry: self.config.registry.clone(),
            username: Secret::from(username),
            token: password.clone(),
            password,
            expires_at: Some(expires_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_growing_buffer_keeps_every_byte() {
        let mut buffer = Zeroizing::new(Vec::new());
        for i in 0..1000u32 {
            append_wiped(&mut buffer, &i.to_le_bytes());
        }
        assert_eq!(buffer.len(), 4000);
        assert_eq!(&buffer[3996..], &999u32.to_le_bytes());
    }

    #[tokio::test]
    async fn an_exit_is_seen_without_reaping_the_helper() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("0.1")
            .spawn()
            .expect("sleep");
        let pid = child.id().expect("pid") as libc::pid_t;
        let watch = ExitWatch::new(pid);
        assert!(
            matches!(watch, ExitWatch::Pidfd(..)),
            "this kernel has pidfds"
        );
        tokio::time::timeout(Duration::from_secs(10), watch.exited())
            .await
            .expect("the exit is seen");
        assert!(has_exited(pid), "the polling fallback agrees");
        let status = child.wait().await.expect("still there to be reaped");
        assert!(status.success());
    }

    #[test]
    fn expiry_errors_do_not_quote_the_helpers_text() {
        let provider = HelperProvider::new(&HelperConfig {
            registry: "r".to_string(),
            command: vec!["/bin/h".to_string()],
            protocol: HelperProtocol::ThinEdge,
            timeout: Duration::from_secs(1),
            ttl: Duration::from_secs(60),
            env: BTreeMap::new(),
        });
        for text in ["not-a-time-3f9a", "2001-02-03T04:05:06Z"] {
            let error = provider.expiry(Some(text)).unwrap_err();
            assert!(!error.message().contains(text), "{}", error.message());
        }
        assert!(provider.expiry(Some("2999-01-01T00:00:00Z")).is_ok());
    }
}
