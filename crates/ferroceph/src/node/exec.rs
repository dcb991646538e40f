//! Child processes with a deadline. A process that overstays is killed, and the error
//! names the command (never its environment, where keys may travel).

use crate::error::Error;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub(crate) fn success(&self) -> bool {
        self.code == Some(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecError {
    #[error("cannot run {cmd}: {reason} (is it installed?)")]
    Spawn { cmd: String, reason: String },
    #[error("{cmd} did not finish within {secs:.0}s and was killed")]
    TimedOut { cmd: String, secs: f64 },
    #[error("{cmd} failed (exit {code}): {stderr}")]
    Failed {
        cmd: String,
        code: String,
        stderr: String,
    },
}

impl ExecError {
    /// The driver error for a failed child process: a deadline passed (DeadlineExceeded),
    /// the program is missing (FailedPrecondition), it failed (Internal).
    pub(crate) fn to_error(&self) -> Error {
        match self {
            ExecError::TimedOut { .. } => Error::DeadlineExceeded(self.to_string()),
            ExecError::Spawn { .. } => Error::precondition(self),
            ExecError::Failed { .. } => Error::internal(self),
        }
    }
}

impl From<ExecError> for Error {
    fn from(e: ExecError) -> Error {
        e.to_error()
    }
}

/// A printable form of a command line.
pub(crate) fn describe(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs `program args` with `env` added, bounded by `timeout`; returns its output whatever
/// the exit code.
pub(crate) async fn output(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Output, ExecError> {
    let cmd_text = describe(program, args);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|e| ExecError::Spawn {
        cmd: cmd_text.clone(),
        reason: e.to_string(),
    })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
        Ok(Err(e)) => Err(ExecError::Spawn {
            cmd: cmd_text,
            reason: e.to_string(),
        }),
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => Err(ExecError::TimedOut {
            cmd: cmd_text,
            secs: timeout.as_secs_f64(),
        }),
    }
}

/// Like [`output`] but a non-zero exit is an error carrying stderr.
pub(crate) async fn run(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Output, ExecError> {
    let out = output(program, args, env, timeout).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(ExecError::Failed {
            cmd: describe(program, args),
            code: out
                .code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "signal".into()),
            stderr: out.stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_kill_and_errors_name_the_command() {
        let t = std::time::Instant::now();
        let e = run("sleep", &["30"], &[], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, ExecError::TimedOut { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(e.to_error().code(), tonic::Code::DeadlineExceeded);
        let e = run("false", &[], &[], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("false failed"), "{e}");
        let e = run("/nonexistent/tool", &[], &[], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ExecError::Spawn { .. }));
        let o = run(
            "sh",
            &["-c", "echo $X"],
            &[("X", "y")],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(o.stdout.trim(), "y");
    }
}
