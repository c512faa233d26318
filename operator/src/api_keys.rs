//! Where API keys live: a Function's `spec.auth.apiKeys` names a Secret in its own
//! namespace; the operator reads that one Secret (by name, never a list or watch) and
//! writes the SHA-256 digests of its keys into a Secret in the activator's namespace,
//! which the activator reads with a Role there. So the activator, on every request's
//! path, holds no key and no read access to any Secret of a Function's namespace.
//!
//! The digest Secret is deleted when the Function drops `apiKeys` (known to this
//! process); a deleted Function's digest Secret stays until removed by hand, as owner
//! references cannot cross namespaces (a known gap, see NOTES-auth.md).
//!
//! A change of the keys reaches the activator at the Function's next reconcile (a change
//! of the Function, or the periodic resync), since watching Secrets would need read
//! access to every Secret of every watched namespace.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta};
use kube::{Client, ResourceExt};
use zeroscale_api::Function;
use zeroscale_api::auth::{
    DIGESTS_KEY, DIGESTS_LABEL, FUNCTION_NAME_LABEL, FUNCTION_NAMESPACE_LABEL, digests_secret_name,
};
use zeroscale_api::keys;

use crate::Result;
use crate::controller::{FIELD_MANAGER, apply, delete_if_present, get_opt};

/// Writes the digest Secret of `function` in `digests_namespace`; without
/// `spec.auth.apiKeys`, deletes it when this process wrote one (`had_api_keys`). Returns
/// whether the Function has API keys.
pub(crate) async fn sync(
    client: &Client,
    function: &Function,
    namespace: &str,
    digests_namespace: &str,
    had_api_keys: bool,
) -> Result<bool> {
    let name = function.name_any();
    let digests: Api<Secret> = Api::namespaced(client.clone(), digests_namespace);
    let secret_name = digests_secret_name(namespace, &name);
    let Some(api_keys) = function
        .spec
        .auth
        .as_ref()
        .and_then(|auth| auth.api_keys.as_ref())
    else {
        if had_api_keys {
            delete_if_present(&digests, &secret_name).await?;
        }
        return Ok(false);
    };
    let sources: Api<Secret> = Api::namespaced(client.clone(), namespace);
    // A missing Secret leaves the Function with no key: every request is refused.
    let keys = get_opt(&sources, &api_keys.secret_ref.name).await?;
    let secret = digest_secret(
        namespace,
        &name,
        digests_namespace,
        keys.as_ref().and_then(|keys| keys.data.as_ref()),
    );
    apply(&digests, &secret, FIELD_MANAGER).await?;
    Ok(true)
}

/// The digest Secret: every value of `keys` hashed, one lowercase hex digest per line.
pub(crate) fn digest_secret(
    namespace: &str,
    name: &str,
    digests_namespace: &str,
    keys: Option<&BTreeMap<String, ByteString>>,
) -> Secret {
    let lines: Vec<String> = keys
        .into_iter()
        .flat_map(BTreeMap::values)
        .map(|key| sha256_hex(key.0.trim_ascii()))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(digests_secret_name(namespace, name)),
            namespace: Some(digests_namespace.to_owned()),
            labels: Some(
                [
                    (DIGESTS_LABEL.to_owned(), "true".to_owned()),
                    (FUNCTION_NAMESPACE_LABEL.to_owned(), namespace.to_owned()),
                    (FUNCTION_NAME_LABEL.to_owned(), name.to_owned()),
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        keys::MANAGED_BY.to_owned(),
                    ),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(
            [(
                DIGESTS_KEY.to_owned(),
                ByteString(lines.join("\n").into_bytes()),
            )]
            .into(),
        ),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

fn sha256_hex(key: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, key)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_secret_holds_digests_of_trimmed_keys_and_names_its_function() {
        let keys: BTreeMap<String, ByteString> = [
            ("alice".to_owned(), ByteString(b"s3cret\n".to_vec())),
            ("bob".to_owned(), ByteString(b"other".to_vec())),
        ]
        .into();
        let secret = digest_secret("team", "echo", "zeroscale-system", Some(&keys));
        assert_eq!(secret.metadata.name.as_deref(), Some("apikeys.team.echo"));
        assert_eq!(
            secret.metadata.namespace.as_deref(),
            Some("zeroscale-system")
        );
        let labels = secret.metadata.labels.expect("labels");
        assert_eq!(labels[FUNCTION_NAMESPACE_LABEL], "team");
        assert_eq!(labels[FUNCTION_NAME_LABEL], "echo");
        let data = secret.data.expect("data");
        let text = String::from_utf8(data[DIGESTS_KEY].0.clone()).expect("utf-8");
        // echo -n s3cret | sha256sum
        assert_eq!(
            text.lines().next(),
            Some("1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0")
        );
        assert_eq!(text.lines().count(), 2);
        assert!(!text.contains("s3cret"));
    }
}
