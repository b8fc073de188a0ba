//! The `zulip_script_path` / `LOOPER_ZULIP_SCRIPT` hatch: the operator's own program says
//! the message instead of the built-in client.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::ZulipError;

/// How long a `zulip_script_path` program may run before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long its output may still take to arrive once it has exited.
const SCRIPT_OUTPUT_WAIT: Duration = Duration::from_secs(1);
/// The most of a Zulip script's output kept (it becomes `zulip_output`).
const SCRIPT_OUTPUT_MAX: u64 = 1024 * 1024;

/// Announces by running the user's program with the message as its one argument (a `.js`
/// file under `node`, as found at start). Its combined output, trimmed, becomes
/// `zulip_output`.
pub fn run_script(path: &str, message: &str, node: Option<&Path>) -> Result<String, ZulipError> {
    use crate::os::signals::{Bounded, NotStarted};
    let mut cmd = if path.ends_with(".js") {
        let node = node.ok_or_else(|| {
            ZulipError(format!(
                "Zulip script {path} needs node, which Looper did not find on its PATH at start (absolute entries outside the workspaces)"
            ))
        })?;
        let mut c = Command::new(node);
        c.arg(path);
        c
    } else {
        Command::new(path)
    };
    cmd.arg(message);
    let ran = crate::os::signals::run_bounded(
        &mut cmd,
        true,
        SCRIPT_TIMEOUT,
        SCRIPT_OUTPUT_WAIT,
        SCRIPT_OUTPUT_MAX,
    );
    let (status, out) = match ran {
        Ok(Bounded::Exited(status, out)) => (status, out),
        Ok(Bounded::TimedOut) => {
            return Err(ZulipError(format!(
                "Zulip script {path} did not finish within {}s",
                SCRIPT_TIMEOUT.as_secs()
            )))
        }
        Err(NotStarted::Pipe(e)) => {
            return Err(ZulipError(format!(
                "Zulip script {path}: cannot create a pipe: {e}"
            )))
        }
        Err(NotStarted::Spawn(e)) => {
            return Err(ZulipError(format!(
                "Zulip script {path} could not start: {e}"
            )))
        }
    };
    // Whatever the script printed; a helper it left holding the pipe is not waited for long.
    let text = String::from_utf8_lossy(&out).trim().to_string();
    if status.success() {
        Ok(text)
    } else {
        Err(ZulipError(format!(
            "Zulip script {path} failed ({status}): {}",
            text.chars().take(500).collect::<String>()
        )))
    }
}
