//! The checked-in CRD and example manifests agree with the code.

use std::path::{Path, PathBuf};

use zeroscale_api::Function;

fn workspace_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn checked_in_crd_matches_the_generated_one() {
    let generated = zeroscale_operator::crd::yaml().expect("CRD serializes");
    let path = workspace_file("crds/function.yaml");
    let checked_in = std::fs::read_to_string(&path).expect("crds/function.yaml is readable");
    assert!(
        generated == checked_in,
        "crds/function.yaml is stale: run `cargo run -p zeroscale-operator -- crd > crds/function.yaml`"
    );
}

#[test]
fn crd_fits_the_client_side_apply_annotation() {
    let crd = zeroscale_api::crd();
    let json = serde_json::to_string(&crd).expect("CRD serializes");
    // kubectl's last-applied-configuration annotation holds at most 256 KiB.
    assert!(json.len() < 128 * 1024, "CRD JSON is {} bytes", json.len());
}

#[test]
fn example_functions_parse_and_validate() {
    let crd = serde_json::to_value(zeroscale_api::crd()).expect("CRD serializes");
    let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    let mut checked = 0;
    for entry in std::fs::read_dir(workspace_file("examples")).expect("examples/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("example is readable");
        let value: serde_json::Value = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        let problems = schema_problems(&value, &schema, "");
        assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
        let function: Function = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not a Function: {e}", path.display()));
        function
            .spec
            .validate()
            .unwrap_or_else(|e| panic!("{} is invalid: {e}", path.display()));
        checked += 1;
    }
    assert!(checked >= 1, "no example Function was checked");
}

/// What the API server would refuse or drop in `value` under the structural `schema`:
/// unknown fields, values outside an enum, a range, a length or a pattern. (Types are
/// checked by deserializing into `Function`.)
fn schema_problems(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    path: &str,
) -> Vec<String> {
    use serde_json::Value;
    let mut problems = Vec::new();
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        problems.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(number) = value.as_f64() {
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|min| number < min)
        {
            problems.push(format!("{path}: {number} is below the minimum"));
        }
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|max| number > max)
        {
            problems.push(format!("{path}: {number} is above the maximum"));
        }
    }
    if let Some(text) = value.as_str() {
        if schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|max| text.len() as u64 > max)
        {
            problems.push(format!("{path}: longer than maxLength"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            let regex = regex::Regex::new(pattern).expect("schema patterns compile");
            if !regex.is_match(text) {
                problems.push(format!("{path}: {text:?} does not match {pattern}"));
            }
        }
    }
    match value {
        Value::Object(fields)
            if schema.get("x-kubernetes-preserve-unknown-fields") != Some(&Value::Bool(true)) =>
        {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, field) in fields {
                let field_path = format!("{path}.{key}");
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(field_schema), _) | (None, Some(field_schema)) => {
                        problems.extend(schema_problems(field, field_schema, &field_path));
                    }
                    (None, None)
                        if path.is_empty() && ["apiVersion", "kind"].contains(&key.as_str()) => {}
                    // The CRD schema constrains only metadata.name; the rest is ObjectMeta.
                    (None, None) if path == ".metadata" => {}
                    (None, None) => problems.push(format!("{field_path}: unknown field")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    problems.extend(schema_problems(
                        item,
                        item_schema,
                        &format!("{path}[{index}]"),
                    ));
                }
            }
        }
        _ => {}
    }
    problems
}

#[test]
fn schema_walk_finds_unknown_fields_and_bad_values() {
    let crd = serde_json::to_value(zeroscale_api::crd()).expect("CRD serializes");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let manifest = serde_json::json!({
        "apiVersion": "zeroscale.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": "Hello"},
        "spec": {"image": "x", "readinesPath": "/", "port": 70000, "scaling": {"metric": "memory"}}
    });
    let problems = schema_problems(&manifest, schema, "");
    for expected in [
        ".metadata.name",
        ".spec.readinesPath",
        ".spec.port",
        ".spec.scaling.metric",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "{expected} not in {problems:#?}"
        );
    }
}
