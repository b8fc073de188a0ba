//! The `codex` binary and the exact command line Looper runs it with.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Checkouts of codex next to Looper's own executable that win over `PATH` (the original
/// looked beside its own script).
pub const LOCAL_CANDIDATES: &[&str] = &[
    "codex/codex",
    "codex/codex-rs/target/release/codex",
    "codex/codex-rs/target/debug/codex",
];

/// Where the binary came from, as reported in `codex_exec_binary_source`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source {
    Request,
    Env,
    Local,
    Path,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Request => "request",
            Source::Env => "env",
            Source::Local => "local",
            Source::Path => "path",
        }
    }
}

/// Whether `p` lies inside `dir` (both taken as they really are, links resolved).
fn inside(p: &Path, dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    p.canonicalize().is_ok_and(|p| p.starts_with(dir))
}

/// Finds `name` the way a shell would: a path when it holds a `/` (from `cwd`), else on
/// `PATH`. `PATH` entries that are relative, or that lie inside `untrusted` (the run's
/// workspace, which the agent writes), are passed over.
pub fn find_program(
    name: &str,
    cwd: &Path,
    path_var: Option<&str>,
    untrusted: Option<&Path>,
) -> Option<PathBuf> {
    if name.contains('/') {
        let p = cwd.join(name);
        return crate::os::paths::is_executable_file(&p).then_some(p);
    }
    path_var?
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(name))
        .filter(|p| untrusted.is_none_or(|w| !inside(p, w)))
        .find(|p| crate::os::paths::is_executable_file(p))
}

/// Request field, then `CODEX_EXEC_BINARY`, then local checkouts beside Looper's own
/// executable (`own_dir`; never one inside `workspace`), then `codex` on `PATH` (never a
/// directory inside `workspace`). Names and relative paths of the request and the
/// configuration are the operator's, taken from `cwd`. `Err` carries what was not found.
pub fn resolve(
    requested: Option<&str>,
    configured: Option<&str>,
    cwd: &Path,
    own_dir: Option<&Path>,
    path_var: Option<&str>,
    workspace: &Path,
) -> Result<(PathBuf, Source), String> {
    if let Some(name) = requested {
        return find_program(name, cwd, path_var, None)
            .map(|p| (p, Source::Request))
            .ok_or_else(|| name.to_string());
    }
    if let Some(name) = configured {
        return find_program(name, cwd, path_var, None)
            .map(|p| (p, Source::Env))
            .ok_or_else(|| name.to_string());
    }
    let local = own_dir.and_then(|dir| {
        LOCAL_CANDIDATES
            .iter()
            .map(|c| dir.join(c))
            .filter(|p| !inside(p, workspace))
            .find(|p| crate::os::paths::is_executable_file(p))
    });
    if let Some(p) = local {
        return Ok((p, Source::Local));
    }
    find_program("codex", cwd, path_var, Some(workspace))
        .map(|p| (p, Source::Path))
        .ok_or_else(|| "codex".to_string())
}

/// The longest prompt `exec` can pass: Linux refuses any single argument of 128 KiB or more
/// (`MAX_ARG_STRLEN`, counting its terminating NUL) with "Argument list too long".
pub const MAX_PROMPT_BYTES: usize = 128 * 1024 - 1;

/// The arguments after the binary: `--ask-for-approval never exec --sandbox workspace-write
/// -C <workspace> <prompt>`, the prompt as one element. A prompt that starts with `-` (a
/// TODO line such as `- [ ] next`) comes after `--`, so that codex takes it as the prompt
/// and not as an option.
pub fn exec_args(workspace: &Path, prompt: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--ask-for-approval",
        "never",
        "exec",
        "--sandbox",
        "workspace-write",
        "-C",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(workspace.as_os_str().to_owned());
    if prompt.starts_with('-') {
        args.push(OsString::from("--"));
    }
    args.push(OsString::from(prompt));
    args
}

/// One word for a POSIX shell: bare when safe, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\"'\"'"))
    }
}

/// The whole command line, shell-quoted, as shown in the run log and the response.
pub fn command_line(binary: &Path, args: &[OsString]) -> String {
    std::iter::once(binary.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn quoting_round_trips_awkward_prompts() {
        assert_eq!(shell_quote("plain-word_1.2"), "plain-word_1.2");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's $HOME `x`"), "'it'\"'\"'s $HOME `x`'");
    }

    #[test]
    fn the_command_has_the_exact_shape() {
        let args = exec_args(Path::new("/w s"), "do it");
        assert_eq!(
            command_line(Path::new("/bin/codex"), &args),
            "/bin/codex --ask-for-approval never exec --sandbox workspace-write -C '/w s' 'do it'"
        );
        let args = exec_args(Path::new("/w"), "- [ ] next");
        assert_eq!(
            command_line(Path::new("codex"), &args),
            "codex --ask-for-approval never exec --sandbox workspace-write -C /w -- '- [ ] next'"
        );
    }

    #[test]
    fn resolution_order() {
        let dir = std::env::temp_dir().join(format!("looper-codex-{}", std::process::id()));
        let bin = dir.join("bin");
        let ws = dir.join("ws");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(ws.join("bin")).unwrap();
        let exe = bin.join("codex");
        std::fs::write(&exe, "#!/bin/true\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = bin.to_str().unwrap();
        let r = resolve(None, None, &dir, Some(&dir), Some(path), &ws).unwrap();
        assert_eq!(r, (exe.clone(), Source::Path));
        std::fs::create_dir_all(dir.join("codex")).unwrap();
        let local = dir.join("codex/codex");
        std::fs::copy(&exe, &local).unwrap();
        assert_eq!(
            resolve(None, None, &ws, Some(&dir), Some(path), &ws).unwrap(),
            (local.clone(), Source::Local)
        );
        assert_eq!(
            resolve(None, Some("codex"), &dir, Some(&dir), Some(path), &ws).unwrap(),
            (exe.clone(), Source::Env)
        );
        assert_eq!(
            resolve(Some("bin/codex"), Some("x"), &dir, None, None, &ws).unwrap(),
            (dir.join("bin/codex"), Source::Request)
        );
        assert_eq!(
            resolve(Some("nope"), None, &dir, None, Some(path), &ws).unwrap_err(),
            "nope"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What the agent can write never becomes the binary: not a checkout in the working
    /// directory or the workspace, not a `PATH` entry inside the workspace or a relative one.
    #[test]
    fn the_workspace_never_provides_the_binary() {
        let dir = std::env::temp_dir().join(format!("looper-codex-ws-{}", std::process::id()));
        let ws = dir.join("ws");
        let planted = ws.join("codex/codex");
        std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
        std::fs::write(&planted, "#!/bin/true\n").unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(ws.join("bin")).unwrap();
        std::fs::copy(&planted, ws.join("bin/codex")).unwrap();
        let on_path = format!("{}:codex:bin", ws.join("bin").display());
        // Looper started in the workspace, or living in it: nothing found.
        for own in [None, Some(ws.as_path())] {
            let r = resolve(None, None, &ws, own, Some(&on_path), &ws);
            assert_eq!(r, Err("codex".to_string()), "own dir {own:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
