//! Harness for zeroscale's workspace-level tests: reaching a real cluster when one is
//! configured, and a temporary labelled namespace per test that is always deleted.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, ResourceExt};

/// Environment variable naming the kubeconfig of a disposable cluster for cluster tests.
pub const KUBECONFIG_ENV: &str = "ZEROSCALE_TEST_KUBECONFIG";

/// Label on every namespace a test creates, so leftovers are easy to find and delete.
pub const TEST_NAMESPACE_LABEL: &str = "zeroscale.dev/test";

/// A client for the cluster named by [`KUBECONFIG_ENV`]. Cluster tests are ignored
/// unless asked for (`cargo test -p zeroscale-tests -- --ignored`); asked for without
/// the variable, `test` fails saying how to give it a cluster.
pub async fn cluster_client(test: &str) -> anyhow::Result<Client> {
    let Some(path) = std::env::var_os(KUBECONFIG_ENV) else {
        anyhow::bail!(
            "{test} needs a cluster: set {KUBECONFIG_ENV} to the kubeconfig of a disposable cluster"
        );
    };
    let kubeconfig = Kubeconfig::read_from(&path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Applies the Function CRD and waits up to `wait` for the API server to establish it.
pub async fn install_crd(client: &Client, wait: Duration) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = zeroscale_api::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("zeroscale-tests").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    tokio::time::timeout(
        wait,
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await??;
    Ok(())
}

/// Runs `body` (given a client and the namespace's name) in a fresh namespace labelled [`TEST_NAMESPACE_LABEL`], and deletes the
/// namespace afterwards whether `body` returned, failed or panicked.
pub async fn in_temporary_namespace<F, Fut>(
    client: &Client,
    prefix: &str,
    body: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{prefix}-")),
                    labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let name = namespace
        .metadata
        .name
        .ok_or_else(|| anyhow::anyhow!("the API server named no namespace"))?;
    let outcome = AssertUnwindSafe(body(client.clone(), name.clone()))
        .catch_unwind()
        .await;
    namespaces
        .delete(&name, &DeleteParams::background())
        .await?;
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
