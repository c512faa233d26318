//! The watch that delivers API key digests: the Secrets the operator writes in
//! zeroscale's own namespace (one per Function with `spec.auth.apiKeys`, labelled with
//! the Function), read with a Role in that namespace alone. The keys themselves stay in
//! the Functions' namespaces; the activator never reads a Secret there.

use std::collections::BTreeSet;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use zeroscale_admin::process::ErrorChain;
use zeroscale_api::auth::{
    DIGESTS_KEY, DIGESTS_LABEL, FUNCTION_NAME_LABEL, FUNCTION_NAMESPACE_LABEL,
};
use zeroscale_api::routing::FunctionKey;

use crate::auth::{Gate, parse_digests};

/// Keeps `gate`'s API key digests in step with the digest Secrets in `namespace`. Runs
/// until the stream ends.
pub async fn watch_key_digests(client: Client, namespace: &str, gate: &Gate) {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(&format!("{DIGESTS_LABEL}=true"));
    apply_digest_events(watcher(api, config), gate).await;
}

/// Applies watch events of digest Secrets; after a relist, Functions whose Secret is gone
/// lose their keys.
pub(crate) async fn apply_digest_events(
    events: impl Stream<Item = Result<Event<Secret>, watcher::Error>>,
    gate: &Gate,
) {
    let mut known = BTreeSet::new();
    let mut relisted: Option<BTreeSet<FunctionKey>> = None;
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(secret)) => {
                if let Some(key) = apply(&secret, gate) {
                    known.insert(key);
                }
            }
            Ok(Event::InitApply(secret)) => {
                if let Some(key) = apply(&secret, gate) {
                    relisted.get_or_insert_with(BTreeSet::new).insert(key);
                }
            }
            Ok(Event::Delete(secret)) => {
                if let Some(key) = function_of(&secret) {
                    gate.remove_api_keys(&key);
                    known.remove(&key);
                }
            }
            Ok(Event::Init) => relisted = Some(BTreeSet::new()),
            Ok(Event::InitDone) => {
                let listed = relisted.take().unwrap_or_default();
                for gone in known.difference(&listed) {
                    gate.remove_api_keys(gone);
                }
                known = listed;
            }
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "watching API key digests failed; retrying");
            }
        }
    }
}

fn function_of(secret: &Secret) -> Option<FunctionKey> {
    let labels = secret.labels();
    Some(FunctionKey::new(
        labels.get(FUNCTION_NAMESPACE_LABEL)?,
        labels.get(FUNCTION_NAME_LABEL)?,
    ))
}

fn apply(secret: &Secret, gate: &Gate) -> Option<FunctionKey> {
    let key = function_of(secret)?;
    let digests = secret
        .data
        .as_ref()
        .and_then(|data| data.get(DIGESTS_KEY))
        .map(|text| parse_digests(&String::from_utf8_lossy(&text.0)))
        .unwrap_or_default();
    gate.set_api_keys(&key, digests);
    Some(key)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::auth::{digest, to_hex};

    fn secret(function: &str, keys: &[&[u8]]) -> Secret {
        let lines: Vec<String> = keys.iter().map(|key| to_hex(&digest(key))).collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(zeroscale_api::auth::digests_secret_name("team", function)),
                labels: Some(
                    [
                        (DIGESTS_LABEL.to_owned(), "true".to_owned()),
                        (FUNCTION_NAMESPACE_LABEL.to_owned(), "team".to_owned()),
                        (FUNCTION_NAME_LABEL.to_owned(), function.to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some(
                [(
                    DIGESTS_KEY.to_owned(),
                    ByteString(lines.join("\n").into_bytes()),
                )]
                .into(),
            ),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn digests_follow_their_secrets_across_a_relist() {
        let gate = Gate::default();
        let events = futures::stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(secret("echo", &[b"one"]))),
            Ok(Event::InitApply(secret("other", &[b"two"]))),
            Ok(Event::InitDone),
            Ok(Event::Apply(secret("echo", &[b"three"]))),
            Ok(Event::Init),
            Ok(Event::InitApply(secret("echo", &[b"three"]))),
            Ok(Event::InitDone),
        ]);
        apply_digest_events(events, &gate).await;
        assert_eq!(
            gate.api_keys(&FunctionKey::new("team", "echo")),
            vec![digest(b"three")]
        );
        assert!(gate.api_keys(&FunctionKey::new("team", "other")).is_empty());
    }
}
