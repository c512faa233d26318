#!/usr/bin/env bash
# End-to-end on kind: create a cluster, build and load the images, install the chart
# (with its NATS JetStream), deploy examples/hello.yaml, call it through the activator,
# watch it scale to zero and wake on the next call, make one async call and send one
# queue message that wakes a queue-triggered Function from zero, run the cluster tests
# of tests/ against it, and tear it down.
#
#   hack/kind-e2e.sh           # everything, then delete the cluster
#   hack/kind-e2e.sh --keep    # leave the cluster running afterwards (to look around)
#   hack/kind-e2e.sh --reuse   # use an existing zeroscale-e2e cluster instead of failing
#
# KIND_NODE_IMAGE picks the node image (and so the Kubernetes version), for example
# kindest/node:v1.36.0; unset, kind uses its default.
#
# Needs docker (with a running engine), kind, and cargo; helm and kubectl come from
# hack/install-tools.sh unless they are on PATH. It only ever talks to the cluster it
# created: a kubeconfig of its own, `--context kind-zeroscale-e2e` on every command, and
# it refuses to go on when that context is not the one kind just wrote.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

cluster="zeroscale-e2e"
context="kind-$cluster"
release="zeroscale"
system_namespace="zeroscale-system"
# The Functions the installed operator serves. The cluster tests create their own
# namespaces and run their own controller there, so the installed one must not watch them.
app_namespace="default"
# A tag of its own per run: with --reuse, pods of an earlier run's images are replaced,
# not kept because the tag did not change. examples/hello.yaml names zeroscale/hello:dev.
tag="e2e-$(date +%s)"
local_port="${ZEROSCALE_E2E_PORT:-18080}"
nats_port="${ZEROSCALE_E2E_NATS_PORT:-14222}"

keep=false
reuse=false
for arg in "$@"; do
    case "$arg" in
    --keep) keep=true ;;
    --reuse) reuse=true ;;
    -h | --help)
        sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "kind-e2e: unknown argument $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }
die() {
    printf 'kind-e2e: %s\n' "$*" >&2
    exit 1
}

# --- Tools -------------------------------------------------------------------------

missing=()
command -v docker >/dev/null 2>&1 || missing+=("docker (https://docs.docker.com/engine/install/)")
command -v kind >/dev/null 2>&1 || missing+=("kind (go install sigs.k8s.io/kind@latest, or https://kind.sigs.k8s.io/docs/user/quick-start/)")
command -v cargo >/dev/null 2>&1 || missing+=("cargo (https://rustup.rs), for the cluster tests")
command -v curl >/dev/null 2>&1 || missing+=("curl")
if ((${#missing[@]})); then
    printf 'kind-e2e: missing tools:\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi
if ! docker info >/dev/null 2>&1; then
    die "docker is installed but no engine answers (is the daemon running, may this user use it?)"
fi
if [[ "$(docker info --format '{{.CgroupVersion}}' 2>/dev/null)" == "1" ]]; then
    echo "kind-e2e: warning: this host has cgroup v1; kind nodes of Kubernetes 1.35 and later need cgroup v2" >&2
fi
if ! command -v helm >/dev/null 2>&1 || ! command -v kubectl >/dev/null 2>&1; then
    "$root/hack/install-tools.sh"
    PATH="$root/.tools/bin:$PATH"
fi
for tool in helm kubectl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing and hack/install-tools.sh could not provide it"
done

# --- Cluster -----------------------------------------------------------------------

work="$(mktemp -d)"
kubeconfig="$work/kubeconfig"
port_forward_pid=""
nats_forward_pid=""
created=false

teardown() {
    local status=$?
    for pid in "$port_forward_pid" "$nats_forward_pid"; do
        if [[ -n "$pid" ]]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if ((status != 0)) && [[ -f "$kubeconfig" ]]; then
        echo "kind-e2e: failed; state of the cluster:" >&2
        kubectl --kubeconfig "$kubeconfig" --context "$context" get fn,deploy,pods -A -o wide >&2 || true
        kubectl --kubeconfig "$kubeconfig" --context "$context" -n "$system_namespace" logs \
            -l app.kubernetes.io/instance="$release" --all-containers --tail=50 --prefix >&2 || true
    fi
    if [[ "$created" == true && "$keep" == false ]]; then
        step "deleting kind cluster $cluster"
        kind delete cluster --name "$cluster" || true
    elif [[ "$created" == true ]]; then
        echo "kind-e2e: kept cluster $cluster: kind export kubeconfig --name $cluster; kind delete cluster --name $cluster when done"
    fi
    rm -rf "$work"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    if [[ "$reuse" != true ]]; then
        die "a kind cluster named $cluster already exists: delete it (kind delete cluster --name $cluster) or pass --reuse"
    fi
    step "reusing kind cluster $cluster"
    kind get kubeconfig --name "$cluster" >"$kubeconfig"
else
    step "creating kind cluster $cluster"
    created=true
    # A kubeconfig of its own: the user's current context is never touched or used.
    kind create cluster --name "$cluster" --kubeconfig "$kubeconfig" --wait 120s \
        ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi

current="$(kubectl --kubeconfig "$kubeconfig" config current-context)"
if [[ "$current" != "$context" ]]; then
    die "refusing to go on: the kubeconfig's current context is $current, not $context, the cluster this script created"
fi
export KUBECONFIG="$kubeconfig"
k() { kubectl --kubeconfig "$kubeconfig" --context "$context" "$@"; }
k version

# --- Images ------------------------------------------------------------------------

step "building images"
# With buildx, --load puts the image where `kind load` finds it whatever the builder's
# driver (a docker-container builder keeps it in its cache otherwise).
build() {
    if docker buildx version >/dev/null 2>&1; then
        docker buildx build --load "$@"
    else
        DOCKER_BUILDKIT=1 docker build "$@"
    fi
}
build --target operator -t "zeroscale/operator:$tag" .
build --target activator -t "zeroscale/activator:$tag" .
build -t zeroscale/hello:dev examples/hello

step "loading images into $cluster"
for image in "operator:$tag" "activator:$tag" hello:dev; do
    kind load docker-image "zeroscale/$image" --name "$cluster"
done

# --- Install -------------------------------------------------------------------------

if [[ "$reuse" == true ]]; then
    # helm installs crds/ only when the CRD is absent: bring an earlier run's up to date.
    k apply --server-side --force-conflicts -f charts/zeroscale/crds/function.yaml
fi
step "helm install $release"
helm --kubeconfig "$kubeconfig" --kube-context "$context" upgrade --install "$release" charts/zeroscale \
    --namespace "$system_namespace" --create-namespace \
    --set "operator.image.tag=$tag" --set "activator.image.tag=$tag" \
    --set "watchNamespaces={$app_namespace}" \
    --set nats.enabled=true \
    --wait --timeout 5m
k -n "$system_namespace" get deploy,pods,svc

# --- hello: ready, called, to zero and back --------------------------------------------

step "deploying examples/hello.yaml"
k -n "$app_namespace" apply -f examples/hello.yaml
k -n "$app_namespace" wait --for=condition=Ready function/hello --timeout=180s
k -n "$app_namespace" get fn hello -o wide

step "calling hello through the activator (port-forward to 127.0.0.1:$local_port)"
k -n "$system_namespace" port-forward "svc/$release-activator" "$local_port:80" >"$work/port-forward.log" 2>&1 &
port_forward_pid=$!
call() {
    curl --silent --show-error --fail --max-time "$1" -H "Host: hello.$app_namespace" \
        "http://127.0.0.1:$local_port/"
}
# The port-forward takes a moment to listen: retry connection refusals for 30 s.
for _ in $(seq 1 30); do
    if curl --silent --max-time 2 -o /dev/null "http://127.0.0.1:$local_port/" 2>/dev/null; then
        break
    fi
    sleep 1
done
call 30
echo

# Polls `$2` (a kubectl jsonpath of deployment `$4`, hello by default) until it prints
# `$3`, for `$1` seconds.
wait_for_replicas() {
    local seconds="$1" jsonpath="$2" want="$3" deployment="${4:-hello}" got=""
    for _ in $(seq 1 "$seconds"); do
        got="$(k -n "$app_namespace" get deployment "$deployment" -o "jsonpath=$jsonpath")"
        if [[ "${got:-0}" == "$want" ]]; then
            return 0
        fi
        sleep 1
    done
    echo "kind-e2e: deployment/$deployment $jsonpath is ${got:-0}, not $want, after $seconds s" >&2
    return 1
}

step "waiting for hello to scale to zero (grace period 30 s)"
wait_for_replicas 180 '{.spec.replicas}' 0
wait_for_replicas 120 '{.status.replicas}' 0
k -n "$app_namespace" wait --for=jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'=ScaledToZero \
    function/hello --timeout=60s
k -n "$app_namespace" get fn hello -o wide

step "calling hello at zero: the call is held, the Function wakes, the call is answered"
started=$(date +%s)
call 120
echo
echo "answered after $(($(date +%s) - started)) s from zero"
wait_for_replicas 60 '{.spec.replicas}' 1
k -n "$app_namespace" get fn hello -o wide

# --- Async call and queue trigger (NATS JetStream from the chart) ---------------------

step "async call: Prefer: respond-async is answered 202 and the call is delivered"
headers="$work/async-headers"
curl --silent --show-error --max-time 30 -o /dev/null -D "$headers" -X POST \
    -H "Host: hello.$app_namespace" -H "Prefer: respond-async" --data 'order=1' \
    "http://127.0.0.1:$local_port/orders"
grep -q '^HTTP/1.1 202' "$headers" || die "the async call was not accepted: $(head -1 "$headers")"
location="$(grep -i '^location:' "$headers" | tr -d '\r' | cut -d' ' -f2)"
[[ "$location" == /.zeroscale/calls/* ]] || die "no call location in the 202: $(cat "$headers")"
state=""
for _ in $(seq 1 60); do
    state="$(curl --silent --max-time 5 -H "Host: hello.$app_namespace" "http://127.0.0.1:$local_port$location" || true)"
    if [[ "$state" == *'"succeeded"'* ]]; then
        break
    fi
    sleep 1
done
[[ "$state" == *'"succeeded"'* ]] || die "the async call was not delivered within 60 s: $state"
echo "$state"

# Speaks the NATS client protocol over the port-forward: `nats_request SUBJECT PAYLOAD`
# publishes PAYLOAD and prints the first reply (JetStream API calls answer; a publish to
# a stream's subject answers with the stream's acknowledgement).
nats_request() {
    local subject="$1" payload="$2" line reply=""
    exec 3<>"/dev/tcp/127.0.0.1/$nats_port"
    printf 'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.e2e 1\r\nPUB %s _INBOX.e2e %d\r\n%s\r\n' \
        "$subject" "${#payload}" "$payload" >&3
    while IFS= read -r -t 10 line <&3; do
        line="${line%$'\r'}"
        if [[ "$line" == PING ]]; then
            printf 'PONG\r\n' >&3
        elif [[ "$line" == "MSG _INBOX.e2e"* ]]; then
            IFS= read -r -t 10 reply <&3
            break
        fi
    done
    exec 3>&-
    reply="${reply%$'\r'}"
    [[ -n "$reply" && "$reply" != *'"error"'* ]] || die "NATS $subject: ${reply:-no reply}"
    printf '%s\n' "$reply"
}

step "queue trigger: a message on stream ORDERS wakes the orders Function from zero"
k -n "$system_namespace" port-forward "svc/$release-nats" "$nats_port:4222" >"$work/nats-forward.log" 2>&1 &
nats_forward_pid=$!
for _ in $(seq 1 30); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null; then
        break
    fi
    sleep 1
done
# shellcheck disable=SC2016 # a JetStream API subject, not a shell expansion
nats_request '$JS.API.STREAM.CREATE.ORDERS' '{"name":"ORDERS","subjects":["orders.>"]}'
k -n "$app_namespace" apply -f - <<MANIFEST
apiVersion: zeroscale.dev/v1alpha1
kind: Function
metadata:
  name: orders
spec:
  image: zeroscale/hello:dev
  readinessPath: /healthz
  scaling:
    minReplicas: 0
    initialReplicas: 0
    scaleToZeroGracePeriod: 30s
  triggers:
    queues:
      - name: orders
        stream: ORDERS
        subject: orders.>
        target: 1
MANIFEST
k -n "$app_namespace" wait --for=jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'=ScaledToZero \
    function/orders --timeout=120s
nats_request orders.created '{"order":1}'
wait_for_replicas 120 '{.spec.replicas}' 1 orders
echo "the queue message woke orders"

step "queue trigger: the message is delivered and orders scales back to zero"
wait_for_replicas 180 '{.spec.replicas}' 0 orders
k -n "$app_namespace" get fn orders -o wide

# --- Cluster tests ---------------------------------------------------------------------

step "cluster tests (tests/) against $context"
ZEROSCALE_TEST_KUBECONFIG="$kubeconfig" cargo test -p zeroscale-tests -- --include-ignored

step "kind end-to-end passed"
