# Developer tasks; CI runs `make test` through .ci/run.
.PHONY: run test lint crd

# Run the operator against the current kubectl context (CRD installed first).
run:
	cargo run -p zeroscale-operator -- crd | kubectl apply -f -
	cargo run -p zeroscale-operator -- run --leader-election=false

# Everything CI checks: formatting, lints, the chart (lint, schemas, RBAC files, values
# table, shellcheck), the CRD is current, all tests, the benchmarks' smoke run.
test: lint
	bash hack/check-chart.sh
	cargo run -q -p zeroscale-operator -- crd | diff -u crds/function.yaml - || \
		(echo "crds/function.yaml is stale: run 'make crd'" && exit 1)
	# Tests that need a cluster are reported as ignored; the README's Tests section
	# runs them against a kubeconfig.
	cargo test --workspace
	# The benchmarks in seconds, without the warm path (no wrk or nginx needed): fails
	# only on hard errors such as a request at zero not answered 200.
	cargo run -q -p zeroscale-bench -- smoke --no-install --only cold,burst,memory,local

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Regenerate the checked-in CRD and the chart's copy of it.
crd:
	cargo run -q -p zeroscale-operator -- crd > crds/function.yaml
	cp crds/function.yaml charts/zeroscale/crds/function.yaml
