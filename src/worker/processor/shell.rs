//! The built-in shell processor: `/bin/sh -c <command>`.
//!
//! Lifetime rules: the shell runs in its own process group, and the instance owns that group.
//! When the attempt ends for any reason (the shell exits, the timeout passes, the instance is
//! canceled, or the future is dropped) the whole group is killed with SIGKILL, so background
//! children cannot outlive the attempt or keep its output pipes open. If the worker process
//! itself dies, `PR_SET_PDEATHSIG` kills the shell; its own children (which do not inherit the
//! death signal) are only reached by the group kill, so a worker killed with SIGKILL can leave
//! them behind.

use std::collections::VecDeque;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use super::{
    InstanceLogger, ProcessContext, ProcessError, ProcessOutcome, Processor, MAX_LOG_LINE,
};

/// How many trailing output lines go into the result.
const TAIL_LINES: usize = 20;
/// And at most this many bytes of them.
const TAIL_BYTES: usize = 4096;
/// After the shell exits and its group is killed, how long to keep reading what is left in
/// the pipes (a process that escaped the group with `setsid` could hold them forever).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Runs `command` with `/bin/sh -c`. Success iff the exit code is 0.
#[derive(Debug, Clone)]
pub struct ShellProcessor {
    pub command: String,
}

#[async_trait::async_trait]
impl Processor for ShellProcessor {
    async fn process(&self, ctx: ProcessContext) -> Result<ProcessOutcome, ProcessError> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RAFTJOB_INSTANCE_ID", ctx.instance_id.to_string())
            .env("RAFTJOB_ATTEMPT", ctx.attempt.to_string())
            .env("RAFTJOB_JOB_ID", ctx.job_id.to_string())
            .env("RAFTJOB_JOB_PARAMS", ctx.job_params.to_string())
            .env("RAFTJOB_INSTANCE_PARAMS", ctx.instance_params.to_string())
            // Its own group, so one killpg reaches everything the command started.
            .process_group(0)
            // The worker's own credentials are not the job's business.
            .env_remove("RAFTJOB_WORKER_TOKEN")
            // Backstop for paths that drop the Child without going through the guard.
            .kill_on_drop(true);
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe calls are allowed; prctl, getppid and reading errno are.
        // It allocates nothing and touches no locks.
        unsafe {
            cmd.pre_exec(move || {
                // The shell gets SIGKILL when the thread that forked it exits (see `spawn`:
                // that thread lives as long as the worker process).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // The worker may have died between fork and prctl: then nothing would ever
                // deliver the signal, so give up now.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }

        let mut child = spawn(cmd)
            .await
            .map_err(|e| ProcessError::Spawn(format!("/bin/sh: {e}")))?;
        let pgid = child.id().ok_or_else(|| {
            ProcessError::Spawn("the shell exited before it could be tracked".into())
        })? as libc::pid_t;
        // Declared after `child` so that, if this future is dropped mid-run, it drops first:
        // the group is killed before `kill_on_drop` hands the shell to tokio for reaping, so
        // the group id (the shell's pid) cannot have been reused yet.
        let mut group = GroupGuard::new(pgid);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();

        let tail = Mutex::new(Tail::default());
        let mut pumps = Box::pin(async {
            tokio::join!(
                pump(stdout, "", &ctx.logger, &tail),
                pump(stderr, "[stderr] ", &ctx.logger, &tail)
            )
        });
        let mut drained = false;
        let verdict = {
            let run = async {
                tokio::select! {
                    status = child.wait() => status,
                    _ = &mut pumps => {
                        drained = true;
                        child.wait().await
                    }
                }
            };
            tokio::select! {
                status = run => Verdict::Exited(status),
                _ = ctx.cancel.cancelled() => Verdict::Canceled,
                _ = sleep_or_forever(ctx.timeout) => Verdict::TimedOut,
            }
        };
        // Whatever the verdict, the attempt is over: so is everything in its group.
        group.kill();
        if matches!(verdict, Verdict::Exited(_)) && !drained {
            // The group is dead, so the pipes close; collect the last of the output.
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut pumps).await;
        }
        drop(pumps);

        match verdict {
            Verdict::Exited(status) => {
                let status = status?;
                let tail = tail.into_inner().unwrap_or_else(|e| e.into_inner());
                let result = with_tail(describe(status), &tail.render());
                Ok(if status.success() {
                    ProcessOutcome::success(result)
                } else {
                    ProcessOutcome::failure(result)
                })
            }
            Verdict::Canceled | Verdict::TimedOut => {
                // Reap the shell (SIGKILL cannot be ignored, so this is prompt).
                let _ = child.wait().await;
                if matches!(verdict, Verdict::Canceled) {
                    ctx.logger
                        .log("[raftjob] canceled: killed the process group");
                    Err(ProcessError::Canceled)
                } else {
                    let limit = ctx.timeout.unwrap_or_default();
                    ctx.logger.log(format!(
                        "[raftjob] timed out after {} ms: killed the process group",
                        limit.as_millis()
                    ));
                    Err(ProcessError::Timeout(limit))
                }
            }
        }
    }
}

enum Verdict {
    Exited(io::Result<ExitStatus>),
    Canceled,
    TimedOut,
}

async fn sleep_or_forever(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => format!("exited: {status}"),
    }
}

fn with_tail(head: String, tail: &str) -> String {
    if tail.is_empty() {
        head
    } else {
        format!("{head}\n{tail}")
    }
}

/// Kills the shell's process group with SIGKILL once: explicitly, or on drop (the
/// processor's future was dropped mid-run, e.g. the runtime gave up on it).
struct GroupGuard {
    pgid: libc::pid_t,
    killed: bool,
}

impl GroupGuard {
    fn new(pgid: libc::pid_t) -> Self {
        Self {
            pgid,
            killed: false,
        }
    }

    fn kill(&mut self) {
        if !self.killed && self.pgid > 0 {
            self.killed = true;
            // SAFETY: plain syscall; ESRCH (group already empty) is the expected failure.
            unsafe {
                libc::killpg(self.pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Spawns `cmd` on a dedicated thread that lives as long as the process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
/// Tokio's worker threads can be retired (a worker that ran `block_in_place` returns to the
/// blocking pool and exits when idle), which would SIGKILL a healthy job; forking from one
/// permanent thread ties the signal to the worker process's life.
async fn spawn(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<std_mpsc::Sender<SpawnJob>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel::<SpawnJob>();
        let started = std::thread::Builder::new()
            .name("raftjob-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        if let Err(e) = started {
            tracing::error!("cannot start the process spawner thread: {e}");
        }
        tx
    });

    // The child registers with this runtime's process driver for reaping.
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: SpawnJob = Box::new(move || {
        let _entered = handle.enter();
        let mut cmd = cmd;
        if let Err(Ok(child)) = tx.send(cmd.spawn()) {
            // The caller went away while we forked: nobody will manage this group.
            if let Some(pid) = child.id() {
                // SAFETY: plain syscall on the group we just created.
                unsafe {
                    libc::killpg(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    });
    spawner
        .send(job)
        .map_err(|_| io::Error::other("the process spawner thread is not running"))?;
    rx.await
        .map_err(|_| io::Error::other("the process spawner thread is not running"))?
}

/// The last lines of output, for the result.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, line: String) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.lines.len() > TAIL_LINES || (self.bytes > TAIL_BYTES && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len() + 1;
            }
        }
    }

    fn render(&self) -> String {
        let mut out = self
            .lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n");
        // A single line may still exceed the budget.
        if out.len() > TAIL_BYTES {
            let mut start = out.len() - TAIL_BYTES;
            while !out.is_char_boundary(start) {
                start += 1;
            }
            out.drain(..start);
        }
        out
    }
}

/// Forwards `reader` to the logger line by line (lines over [`MAX_LOG_LINE`] are split),
/// recording each line in the tail.
async fn pump<R: AsyncRead + Unpin>(
    reader: Option<R>,
    prefix: &str,
    logger: &InstanceLogger,
    tail: &Mutex<Tail>,
) {
    let Some(mut reader) = reader else { return };
    let emit = |bytes: &[u8]| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let line = format!("{prefix}{}", String::from_utf8_lossy(bytes));
        logger.log(line.clone());
        if let Ok(mut tail) = tail.lock() {
            tail.push(line);
        }
    };
    let max = MAX_LOG_LINE - prefix.len();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
            emit(&pending[start..start + i]);
            start += i + 1;
        }
        pending.drain(..start);
        // No newline in sight: ship what we have rather than buffer without bound.
        while pending.len() >= max {
            let rest = pending.split_off(max);
            emit(&pending);
            pending = rest;
        }
    }
    if !pending.is_empty() {
        emit(&pending);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{context, drain};
    use super::*;
    use std::path::Path;
    use std::time::Instant;

    fn shell(command: &str) -> ShellProcessor {
        ShellProcessor {
            command: command.into(),
        }
    }

    /// Polls `cond` every 20 ms until it holds or `limit` passes.
    async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if cond() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The pid in `file` once the command has written it (atomically, via rename).
    async fn read_pid(file: &Path) -> libc::pid_t {
        assert!(
            wait_for(Duration::from_secs(10), || file.exists()).await,
            "the command never wrote its child's pid"
        );
        std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Gone, or a zombie nobody has reaped yet (PID 1 in a container may not reap).
    fn process_gone(pid: libc::pid_t) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next()),
                Some('Z') | Some('X')
            ),
        }
    }

    /// Starts `sleep 30` in the background and records its pid in `file`.
    fn background_sleep(file: &Path, then: &str) -> String {
        let f = file.display();
        format!("sleep 30 & echo $! > {f}.tmp && mv {f}.tmp {f}; {then}")
    }

    #[tokio::test]
    async fn success_streams_output_and_sees_the_environment() {
        let p = shell(
            "echo id=$RAFTJOB_INSTANCE_ID attempt=$RAFTJOB_ATTEMPT job=$RAFTJOB_JOB_ID; \
             echo \"$RAFTJOB_JOB_PARAMS $RAFTJOB_INSTANCE_PARAMS\"; echo oops >&2",
        );
        let (ctx, mut rx) = context(None);
        let outcome = p.process(ctx).await.expect("runs");
        assert!(outcome.success, "{outcome:?}");
        assert!(
            outcome.result.starts_with("exit code 0\n"),
            "{}",
            outcome.result
        );
        assert!(
            outcome.result.contains("id=7 attempt=2 job=3"),
            "{}",
            outcome.result
        );

        let lines = drain(&mut rx);
        assert!(
            lines.contains(&"id=7 attempt=2 job=3".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&r#"{"region":"eu"} {"n":1}"#.to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"[stderr] oops".to_string()), "{lines:?}");
    }

    #[tokio::test]
    async fn non_zero_exit_is_a_failure_with_the_code() {
        let (ctx, _rx) = context(None);
        let outcome = shell("echo before; exit 3")
            .process(ctx)
            .await
            .expect("runs");
        assert!(!outcome.success);
        assert_eq!(outcome.result, "exit code 3\nbefore");

        let (ctx, _rx) = context(None);
        let outcome = shell("kill -9 $$").process(ctx).await.expect("runs");
        assert!(!outcome.success);
        assert_eq!(outcome.result, "killed by signal 9");
    }

    #[tokio::test]
    async fn result_keeps_only_the_tail_of_the_output() {
        let (ctx, mut rx) = context(None);
        let outcome = shell("seq 1 100").process(ctx).await.expect("runs");
        let expected: Vec<String> = (81..=100).map(|n| n.to_string()).collect();
        assert_eq!(
            outcome.result,
            format!("exit code 0\n{}", expected.join("\n"))
        );
        assert_eq!(drain(&mut rx).len(), 100);

        // A long line without a newline is split for the log, and the tail stays bounded.
        let (ctx, mut rx) = context(None);
        let outcome = shell("head -c 10000 /dev/zero | tr '\\0' x")
            .process(ctx)
            .await
            .expect("runs");
        let lines = drain(&mut rx);
        assert_eq!(lines.iter().map(String::len).sum::<usize>(), 10000);
        assert!(lines.iter().all(|l| l.len() <= MAX_LOG_LINE));
        assert!(outcome.result.len() <= "exit code 0\n".len() + TAIL_BYTES);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        let p = shell(&background_sleep(&file, "wait"));
        let (ctx, mut rx) = context(Some(Duration::from_secs(2)));
        let started = Instant::now();
        let err = p.process(ctx).await.expect_err("times out");
        assert!(
            matches!(err, ProcessError::Timeout(d) if d == Duration::from_secs(2)),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(drain(&mut rx).iter().any(|l| l.contains("timed out")));

        let pid = read_pid(&file).await;
        assert!(
            wait_for(Duration::from_secs(5), || process_gone(pid)).await,
            "background sleep {pid} survived the timeout"
        );
    }

    #[tokio::test]
    async fn cancellation_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        let p = shell(&background_sleep(&file, "wait"));
        let (ctx, _rx) = context(None);
        let cancel = ctx.cancel.clone();
        let task = tokio::spawn(async move { p.process(ctx).await });

        let pid = read_pid(&file).await;
        assert!(!process_gone(pid));
        let canceled_at = Instant::now();
        cancel.cancel();
        let err = task.await.unwrap().expect_err("canceled");
        assert!(matches!(err, ProcessError::Canceled), "{err}");
        assert!(canceled_at.elapsed() < Duration::from_secs(5));
        assert!(
            wait_for(Duration::from_secs(5), || process_gone(pid)).await,
            "background sleep {pid} survived the cancellation"
        );
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        let p = shell(&background_sleep(&file, "wait"));
        let (ctx, _rx) = context(None);
        let task = tokio::spawn(async move { p.process(ctx).await });

        let pid = read_pid(&file).await;
        assert!(!process_gone(pid));
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(
            wait_for(Duration::from_secs(5), || process_gone(pid)).await,
            "background sleep {pid} survived the dropped future"
        );
    }

    #[tokio::test]
    async fn leftover_background_processes_do_not_hold_the_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        // The shell exits at once; the sleep keeps stdout open.
        let p = shell(&background_sleep(&file, "echo done"));
        let (ctx, _rx) = context(None);
        let started = Instant::now();
        let outcome = p.process(ctx).await.expect("runs");
        assert!(outcome.success);
        assert_eq!(outcome.result, "exit code 0\ndone");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );

        let pid = read_pid(&file).await;
        assert!(
            wait_for(Duration::from_secs(5), || process_gone(pid)).await,
            "background sleep {pid} outlived the attempt"
        );
    }

    #[tokio::test]
    async fn missing_command_is_a_failed_run() {
        // The shell starts but the command does not exist: that is a failed run, not an error.
        let (ctx, _rx) = context(None);
        let outcome = shell("/nonexistent/raftjob-test")
            .process(ctx)
            .await
            .expect("runs");
        assert!(!outcome.success);
        assert!(
            outcome.result.starts_with("exit code 127\n"),
            "{}",
            outcome.result
        );
    }
}
