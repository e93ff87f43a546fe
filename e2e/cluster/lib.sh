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
# kubectl's discovery and OpenAPI cache, keyed by server address only: every local cluster is at
# 127.0.0.1:6443, so a cache in the home directory is shared by clusters (and runs) that differ.
export KUBECACHEDIR="$state/kube-cache"
API_SERVER=https://127.0.0.1:6443
POD_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
RELEASE=voxtral-operator
RELEASE_NAMESPACE=voxtral-system
# The node agent's address for every node (its InternalIP): where the API server reaches the kubelets.
NODE_IP=10.244.0.1
HOSTS_FILE=/etc/netns/$NETNS/hosts

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

# Every operator process (e2e/cluster/operator), peers included.
stop_operators() {
  local name
  for name in $(ls "$pids" 2>/dev/null); do
    case "$name" in operator*) stop_process "$name" ;; esac
  done
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

# etcd, its data in memory (the cluster is thrown away by `down`).
start_etcd() {
  start_process etcd "$bin/etcd" --name local --data-dir "/dev/shm/$NETNS-etcd" --unsafe-no-fsync \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster local=http://127.0.0.1:2380 --log-level warn
  wait_for 30 etcd in_netns curl -sf http://127.0.0.1:2379/health
}

# The API server: RBAC, strict owner-reference admission, and an audit log of every write.
start_apiserver() {
  start_process kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=127.0.0.1 --advertise-address=10.96.0.1 --secure-port=6443 \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --endpoint-reconciler-type=none \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-certificate-authority="$pki/ca.crt" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --allow-privileged=true \
    --audit-policy-file="$here/audit-policy.yaml" --audit-log-path="$state/audit.log" \
    --audit-log-format=json --audit-log-mode=blocking --audit-log-maxsize=1000000
  wait_for 90 "the API server" in_netns curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" \
    --key "$pki/admin.key" "$API_SERVER/readyz"
}
