# Shared by the local control plane's scripts (sourced, not run).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
NETNS=${VOXTRAL_CLUSTER_NETNS:-voxtral-e2e}
state="$root/.tools/cluster"
bin="$root/.tools/k8s-$K8S_VERSION/bin"
pki="$state/pki"
logs="$state/logs"
pids="$state/pids"
venv="$root/.venv/bin"
# The operator and the node agent run the code of this checkout (a worktree may share another's .venv).
export PYTHONPATH="$root/operator:$root/testbed${PYTHONPATH:+:$PYTHONPATH}"
ADMIN_KUBECONFIG="$state/admin.kubeconfig"
OPERATOR_KUBECONFIG="$state/operator.kubeconfig"
API_SERVER=https://127.0.0.1:6443
POD_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
RELEASE=voxtral-operator
RELEASE_NAMESPACE=voxtral-system

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
in_netns() { ip netns exec "$NETNS" "$@"; }
kubectl_admin() { in_netns env KUBECONFIG="$ADMIN_KUBECONFIG" "$root/.tools/kubectl" "$@"; }

# Starts a long-lived process inside the namespace, in its own process group, logging to logs/NAME.log.
start_process() {
  local name=$1
  shift
  mkdir -p "$logs" "$pids"
  # Not through in_netns: a function would put a subshell's pid in the pid file. ip execs setsid,
  # which execs the command, so $! is the command itself, leading a process group of its own.
  ip netns exec "$NETNS" setsid "$@" >>"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$pids/$name"
}

stop_process() {
  local name=$1 pid
  [ -f "$pids/$name" ] || return 0
  pid=$(cat "$pids/$name")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pids/$name"
}

running() { [ -f "$pids/$1" ] && kill -0 "$(cat "$pids/$1")" 2>/dev/null; }

# Waits until a command succeeds (inside the namespace), or fails after $1 seconds with the last output.
wait_for() {
  local timeout=$1 what=$2 out
  shift 2
  local deadline=$(($(date +%s) + timeout))
  until out=$("$@" 2>&1); do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "gave up waiting for $what after ${timeout}s: $out"
      return 1
    fi
    sleep 0.5
  done
}
