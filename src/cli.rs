//! The command line: `looper` / `looper serve` run the server; `--help` and `--version`.

use crate::server;

const USAGE: &str = "usage: looper [serve] [--help] [--version]";

const HELP: &str = "\
looper - announce on Zulip, stop every live `codex exec` run, start one fresh run

usage:
  looper            run the server (same as `looper serve`)
  looper serve      run the server on LOOPER_HOST:LOOPER_PORT (default 127.0.0.1:3456)
  looper --help     this text
  looper --version  the version

examples:
  looper
  LOOPER_PORT=4000 LOOPER_WORKSPACE=~/src/project looper serve
  curl -sS -X POST http://127.0.0.1:3456/run -H 'Content-Type: application/json' \\
       -d '{\"zulip_message\":\"starting a fresh run\"}'

Configuration is by environment variables; see README.md.";

/// Runs the command line and returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] | ["serve"] => serve(),
        ["--help" | "-h" | "help"] | ["serve", "--help" | "-h"] => {
            println!("{HELP}");
            0
        }
        ["--version" | "-V"] | ["serve", "--version" | "-V"] => {
            println!("looper {}", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            eprintln!("looper: unknown arguments: {}\n{USAGE}", args.join(" "));
            2
        }
    }
}

fn serve() -> i32 {
    match server::run(&server::env_map()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("looper: {e}");
            match e {
                server::StartError::Config(_) => 2,
                server::StartError::Io(_) => 1,
            }
        }
    }
}
