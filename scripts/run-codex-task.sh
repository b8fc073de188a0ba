#!/usr/bin/env bash
# Ask Looper for a fresh Codex run of this repository: a drop-in for the original
# wrapper, built on `looper trigger`. Codex's last step can call it to keep the loop going.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: run-codex-task.sh [options] ["message"]

Asks Looper for a fresh Codex run of the repository this script lives in (the run calling
it is replaced). Inside codex's sandbox, where no socket can be opened, the request goes
through the run's inbox ($LOOPER_INBOX).

  message    the Zulip announcement; else the contents of run-codex-task.message.txt next
             to this script (the original wrapper's file), else looper-message.txt next to
             it, else "Looper trigger from <repository>"
  prompt     looper-prompt.md next to this script when present, else the server's default

options (passed to `looper trigger`):
  --follow   print the new run's log until it ends
  --inbox    use $LOOPER_INBOX even when Looper can be reached over HTTP
  --done     the task is done: the loop finishes (nothing is stopped, no run starts)
  -h, --help this text; nothing is triggered

environment: LOOPER_BIN (the looper binary; set in every run; default: looper on PATH),
LOOPER_URL, LOOPER_API_TOKEN, LOOPER_RUN_ID, LOOPER_INBOX.
USAGE
}

message=""
options=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    -*) options+=("$arg") ;;
    *)
      if [ -z "$message" ]; then
        message="$arg"
      else
        echo "run-codex-task.sh: one message only (quote it); see --help" >&2
        exit 2
      fi
      ;;
  esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || dirname "$here")"
looper="${LOOPER_BIN:-looper}"

for file in "$here/run-codex-task.message.txt" "$here/looper-message.txt"; do
  if [ -z "$message" ] && [ -f "$file" ]; then
    message="$(cat "$file")"
  fi
done
if [ -z "$message" ]; then
  message="Looper trigger from $(basename "$repo")"
fi

args=(trigger --message "$message" --workspace "$repo")
if [ -f "$here/looper-prompt.md" ]; then
  args+=(--prompt-file "$here/looper-prompt.md")
fi
exec "$looper" "${args[@]}" ${options[@]+"${options[@]}"}
