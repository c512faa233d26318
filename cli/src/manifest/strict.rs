//! Strict field validation, as kubectl does it since Kubernetes 1.27: every field of a
//! Function manifest must be one the CRD's structural schema declares, so a misspelt
//! `scalling:` is refused instead of silently running with defaults. Subtrees marked
//! `x-kubernetes-preserve-unknown-fields` accept anything, as on a cluster.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

/// The fields of `metadata` the API server knows (ObjectMeta): the CRD's schema only
/// describes `metadata.name`, so the rest are named here.
const OBJECT_META_FIELDS: &[&str] = &[
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// The paths of the fields in `document` (a whole Function manifest) that the schema
/// of the CRD version `version` does not declare, such as `spec.scalling` or
/// `spec.env[0].nme`, sorted by name at each level. Err when the CRD has no such version.
pub(crate) fn unknown_fields(document: &Value, version: &str) -> Result<Vec<String>, String> {
    let crd = zeroscale_api::crd();
    let served: Vec<&str> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
    let schema = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .ok_or_else(|| {
            format!(
                "apiVersion: version {version:?} is not served (served: {})",
                served.join(", ")
            )
        })?
        .schema
        .as_ref()
        .and_then(|validation| validation.open_api_v3_schema.as_ref());
    let mut unknown = Vec::new();
    let (Some(schema), Value::Object(fields)) = (schema, document) else {
        return Ok(unknown);
    };
    let properties = schema.properties.as_ref();
    for (name, value) in fields {
        match name.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                if let Value::Object(metadata) = value {
                    unknown.extend(
                        metadata
                            .keys()
                            .filter(|key| !OBJECT_META_FIELDS.contains(&key.as_str()))
                            .map(|key| format!("metadata.{key}")),
                    );
                }
            }
            _ => match properties.and_then(|p| p.get(name)) {
                Some(field) => check(value, field, name, &mut unknown),
                None => unknown.push(name.clone()),
            },
        }
    }
    Ok(unknown)
}

/// Adds to `unknown` the paths under `path` (where `value` sits) that `schema` does not
/// declare.
fn check(value: &Value, schema: &JSONSchemaProps, path: &str, unknown: &mut Vec<String>) {
    if schema.x_kubernetes_preserve_unknown_fields == Some(true) {
        return;
    }
    match value {
        Value::Object(fields) => {
            let additional = schema.additional_properties.as_ref();
            for (name, value) in fields {
                let path = format!("{path}.{name}");
                match (
                    schema.properties.as_ref().and_then(|p| p.get(name)),
                    additional,
                ) {
                    (Some(field), _) => check(value, field, &path, unknown),
                    (None, Some(JSONSchemaPropsOrBool::Schema(field))) => {
                        check(value, field, &path, unknown);
                    }
                    (None, Some(JSONSchemaPropsOrBool::Bool(true))) => {}
                    // A schema that says nothing about objects (int-or-string, say)
                    // leaves the value's type to the typed parse.
                    (None, _) if schema.type_.as_deref() != Some("object") => {}
                    (None, _) => unknown.push(path),
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
                for (index, value) in items.iter().enumerate() {
                    check(value, item, &format!("{path}[{index}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(yaml: &str) -> Vec<String> {
        let document: Value = serde_saphyr::from_str(yaml).expect("YAML");
        unknown_fields(&document, "v1alpha1").expect("served version")
    }

    const HEAD: &str = "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\n";

    #[test]
    fn a_function_with_only_declared_fields_has_none_unknown() {
        let yaml = format!(
            "{HEAD}metadata: {{name: a, namespace: b, labels: {{x: y}}, annotations: {{z: w}}}}\nspec:\n  image: x\n  scaling: {{minReplicas: 0}}\n  env: [{{name: A, value: b}}]\n  resources: {{requests: {{cpu: 10m}}}}\n"
        );
        assert_eq!(unknown(&yaml), Vec::<String>::new());
    }

    #[test]
    fn misspelt_fields_are_named_by_their_path_at_every_level() {
        let yaml = format!(
            "{HEAD}metadata: {{name: a, lables: {{x: y}}}}\nspec:\n  image: x\n  scalling: {{minReplicas: 0}}\n  scaling: {{minReplica: 0}}\n  env: [{{name: A, vaule: b}}]\n  resources: {{requests: {{cpu: 10m}}, limit: {{}}}}\nstatuss: {{}}\n"
        );
        assert_eq!(
            unknown(&yaml),
            [
                "metadata.lables",
                "spec.env[0].vaule",
                "spec.resources.limit",
                "spec.scaling.minReplica",
                "spec.scalling",
                "statuss",
            ]
        );
    }

    #[test]
    fn subtrees_that_preserve_unknown_fields_accept_anything() {
        let yaml = format!(
            "{HEAD}metadata: {{name: a}}\nspec:\n  image: x\n  volumes: [{{name: v, anything: {{at: [all]}}}}]\n"
        );
        assert_eq!(unknown(&yaml), Vec::<String>::new());
    }

    #[test]
    fn a_version_the_crd_does_not_serve_is_refused() {
        let document: Value = serde_saphyr::from_str("kind: Function\n").expect("YAML");
        let error = unknown_fields(&document, "v9").expect_err("not served");
        assert!(error.contains("v1alpha1"), "{error}");
    }
}
