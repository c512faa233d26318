# Developer tasks; CI runs `make test` through .ci/run.
.PHONY: run test lint crd

# Run the operator against the current kubectl context (CRD installed first).
run:
	cargo run -p zeroscale-operator -- crd | kubectl apply -f -
	cargo run -p zeroscale-operator -- run --leader-election=false

# Everything CI checks: formatting, lints, the CRD is current, all tests.
test: lint
	cargo run -q -p zeroscale-operator -- crd | diff -u crds/function.yaml - || \
		(echo "crds/function.yaml is stale: run 'make crd'" && exit 1)
	cargo test --workspace --exclude zeroscale-tests
	# Cluster tests print why they skip when no cluster is configured.
	cargo test -p zeroscale-tests -- --nocapture

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Regenerate the checked-in CRD.
crd:
	cargo run -q -p zeroscale-operator -- crd > crds/function.yaml
