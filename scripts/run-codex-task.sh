#!/usr/bin/env bash
# Ask Looper for a fresh Codex run of this repository: a drop-in for the original
# wrapper, built on `looper trigger`. Codex's last step can call it to keep the loop going.
#
# usage: scripts/run-codex-task.sh ["message"] [more looper trigger flags, e.g. --follow]
#
#   message    the first argument, else the contents of looper-message.txt next to this
#              script, else "Looper trigger from <repository>"
#   prompt     looper-prompt.md next to this script when present, else the server's default
#   workspace  the repository this script lives in
#   from run   $LOOPER_RUN_ID when set (the run calling us), so a late call is refused
#
# Environment: LOOPER_URL (with or without /run), LOOPER_API_TOKEN, LOOPER_BIN (the looper
# binary; default: looper on PATH).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || dirname "$here")"
looper="${LOOPER_BIN:-looper}"

message="${1:-}"
if [ -z "$message" ] && [ -f "$here/looper-message.txt" ]; then
  message="$(cat "$here/looper-message.txt")"
fi
if [ -z "$message" ]; then
  message="Looper trigger from $(basename "$repo")"
fi

args=(trigger --message "$message" --workspace "$repo")
if [ -f "$here/looper-prompt.md" ]; then
  args+=(--prompt-file "$here/looper-prompt.md")
fi
exec "$looper" "${args[@]}" "${@:2}"
