#!/usr/bin/env bash
# Checks the Helm chart and the scripts without a cluster; exits non-zero on any failure.
#   1. helm lint --strict (values.schema.json included) with the default values and
#      each charts/zeroscale/ci/*-values.yaml (every optional feature on; two watched
#      namespaces);
#   2. helm template of each, CRD included, with no two objects of one kind, namespace
#      and name, validated against the Kubernetes JSON
#      schemas of the oldest supported and a current version (kubernetes-validate
#      --strict: unknown fields fail). ServiceMonitor and ReferenceGrant are custom
#      resources the schemas lack: kubernetes-validate warns and skips them;
#   3. the chart's CRD is byte-identical to crds/function.yaml (the generated one);
#   4. the values table in README.md matches values.yaml's comments, and every
#      value has one;
#   5. shellcheck on hack/*.sh.
# Tools come from hack/install-tools.sh (into .tools/). The RBAC rules are checked
# against the code by `cargo test` (tests/tests/rbac.rs).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/hack/install-tools.sh"

bin="$root/.tools/bin"
chart="charts/zeroscale"
# The chart's kubeVersion floor, and a current release.
kube_versions=(1.30.0 1.35.0)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# helm keeps caches and config in these; keep them out of $HOME.
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" HELM_DATA_HOME="$work/helm/data"

failed=0
fail() {
    printf 'check-chart: FAILED: %s\n' "$*" >&2
    failed=1
}

value_sets=("")
for values in "$chart"/ci/*-values.yaml; do
    value_sets+=("$values")
done

for values in "${value_sets[@]}"; do
    name="${values:-default values}"
    before=$failed
    failed=0
    args=()
    if [[ -n "$values" ]]; then
        args=(--values "$values")
    fi
    if ! "$bin/helm" lint --strict --quiet "$chart" "${args[@]}" >"$work/lint.out" 2>&1; then
        cat "$work/lint.out" >&2
        fail "helm lint --strict ($name)"
    fi
    rendered="$work/rendered-$(basename "${values:-default}" .yaml).yaml"
    if ! "$bin/helm" template zeroscale "$chart" --namespace zeroscale-system --include-crds \
        "${args[@]}" >"$rendered" 2>"$work/template.err"; then
        cat "$work/template.err" >&2
        fail "helm template ($name)"
        failed=$((failed | before))
        continue
    fi
    # Two objects of one kind, namespace and name: one would overwrite the other.
    if ! "$bin/python" hack/duplicate-objects.py "$rendered" >"$work/duplicates.out" 2>&1; then
        cat "$work/duplicates.out" >&2
        fail "duplicate objects ($name)"
    fi
    for version in "${kube_versions[@]}"; do
        if ! "$bin/kubernetes-validate" --strict --quiet --kubernetes-version "$version" "$rendered" \
            >"$work/validate.out" 2>&1; then
            cat "$work/validate.out" >&2
            fail "kubernetes-validate --strict -k $version ($name)"
        elif grep -v -E "Couldn't find schema for kind (ServiceMonitor|ReferenceGrant) " "$work/validate.out" | grep -q .; then
            # Anything but the expected warnings for custom resources (ServiceMonitor,
            # the Gateway API's ReferenceGrant) is worth a look.
            cat "$work/validate.out" >&2
            fail "kubernetes-validate warned ($name, $version)"
        fi
    done
    if ((failed == 0)); then
        echo "check-chart: ok: lint, template and schemas ($name)"
    fi
    failed=$((failed | before))
done

if cmp -s crds/function.yaml "$chart/crds/function.yaml"; then
    echo "check-chart: ok: $chart/crds/function.yaml is crds/function.yaml"
else
    fail "$chart/crds/function.yaml differs from crds/function.yaml: cp crds/function.yaml $chart/crds/"
fi

if "$bin/python" hack/values-table.py --check README.md; then
    echo "check-chart: ok: the values table in README.md is current"
else
    fail "values table (hack/values-table.py --write README.md)"
fi

if shellcheck hack/*.sh; then
    echo "check-chart: ok: shellcheck hack/*.sh"
else
    fail "shellcheck"
fi

exit "$failed"
