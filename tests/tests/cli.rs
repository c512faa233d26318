//! The `zeroscale` cluster commands against a real API server (written for Kubernetes
//! 1.36) with zeroscale installed (operator and activator, e.g. from the Helm chart) and
//! the example hello image loaded (`zeroscale/hello:dev`, or the image named by
//! ZEROSCALE_TEST_HELLO_IMAGE): deploy -> Ready -> invoke (cold start) -> logs -> delete,
//! in a temporary namespace. Ignored unless asked for:
//! `ZEROSCALE_TEST_KUBECONFIG=<kubeconfig> cargo test -p zeroscale-tests -- --ignored`.

use std::time::Duration;

use clap::Parser;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, ResourceExt};
use serde_json::json;
use zeroscale_api::Function;
use zeroscale_cli::cluster::connect::Cluster;
use zeroscale_cli::cluster::{Format, delete, deploy, invoke, logs};
use zeroscale_tests::{cluster_client, in_temporary_namespace};

const WAIT: Duration = Duration::from_secs(180);

/// Parses one command's arguments as `zeroscale` would.
fn parse<T: clap::Args>(args: &[&str]) -> T {
    #[derive(clap::Parser)]
    struct Cli<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    Cli::<T>::parse_from(std::iter::once("zeroscale").chain(args.iter().copied())).args
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
#[ignore = "needs a cluster: set ZEROSCALE_TEST_KUBECONFIG"]
async fn deploy_invoke_logs_and_delete_a_function() -> anyhow::Result<()> {
    let client = cluster_client("deploy_invoke_logs_and_delete_a_function").await?;
    let image = std::env::var("ZEROSCALE_TEST_HELLO_IMAGE")
        .unwrap_or_else(|_| "zeroscale/hello:dev".into());
    in_temporary_namespace(&client, "zeroscale-cli", |client, namespace| async move {
        let cluster = Cluster {
            client: client.clone(),
            namespace: namespace.clone(),
        };

        // deploy: at zero from the start, so Ready means "able to wake" and the first
        // invoke is a cold start.
        let args: deploy::Args = parse(&["hello", "--image", &image, "--min", "0"]);
        let mut body = args.function(&namespace)?;
        body["spec"]["scaling"]["initialReplicas"] = json!(0);
        body["spec"]["readinessPath"] = json!("/healthz");
        let (mut out, mut progress) = (Vec::new(), Vec::new());
        deploy::run(
            &cluster,
            body,
            Some(WAIT),
            Format::Human,
            &mut out,
            &mut progress,
        )
        .await?;
        let out = text(out);
        assert!(
            out.starts_with("Function hello is Ready: http://hello."),
            "{out}"
        );

        // invoke through a port-forward to an activator pod.
        let args: invoke::Args = parse(&["hello", "-v", "--path", "/cli"]);
        let (mut out, mut verbose) = (Vec::new(), Vec::new());
        invoke::run(&cluster, &args, &mut out, &mut verbose).await?;
        let (out, verbose) = (text(out), text(verbose));
        assert!(out.starts_with("hello from "), "{out}");
        assert!(
            verbose.contains("* cold start: the Function was at zero"),
            "{verbose}"
        );
        assert!(verbose.contains("* answered by pod hello-"), "{verbose}");

        // logs of the pod that answered, prefixed by its name.
        let args: logs::Args = parse(&["hello", "--tail", "50"]);
        let mut out = Vec::new();
        logs::run(&cluster, &args, &mut out).await?;
        let out = text(out);
        assert!(
            out.lines()
                .any(|line| line.starts_with("hello-") && line.contains(" | ")),
            "{out}"
        );

        // delete, and the Function is gone.
        let functions: Api<Function> = Api::namespaced(client, &namespace);
        let uid = functions.get("hello").await?.uid().unwrap_or_default();
        let mut out = Vec::new();
        delete::run(&cluster, "hello", &mut out).await?;
        tokio::time::timeout(
            WAIT,
            await_condition(functions, "hello", conditions::is_deleted(&uid)),
        )
        .await??;
        Ok(())
    })
    .await
}
