//! `zeroscale invoke`: one request to a Function through the activator, as a caller in
//! the cluster makes it (Host `<name>.<namespace>`), over a port-forward to an activator
//! pod that the CLI opens through the API server, `--url`, or a running `zeroscale dev`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use http::header::{HOST, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use zeroscale_api::{Function, keys};

use super::connect::Cluster;
use super::dev::DevEndpoint;
use super::{DevTarget, Error, Result, Target, activator, http as exchange};

/// `zeroscale invoke`'s arguments.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = "Examples:
  zeroscale invoke hello
  zeroscale invoke hello -d '{\"name\":\"ada\"}' -H 'Content-Type: application/json' -v
  zeroscale invoke hello -X PUT -d @body.json --path /items/1
  zeroscale invoke hello --url http://activator.example.com
  zeroscale invoke hello --dev")]
pub struct Args {
    /// The Function to call.
    pub name: String,
    /// Request body, or @FILE to send a file's content (POST unless -X says otherwise).
    #[arg(short, long, env = "ZEROSCALE_DATA")]
    pub data: Option<String>,
    /// A request header, `K: V`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "K:V")]
    pub headers: Vec<String>,
    /// Request method (default GET, or POST with -d).
    #[arg(short = 'X', long, env = "ZEROSCALE_METHOD")]
    pub method: Option<String>,
    /// Request path and query.
    #[arg(long, default_value = "/", env = "ZEROSCALE_PATH")]
    pub path: String,
    /// Call the activator at this URL instead of port-forwarding to one of its pods.
    #[arg(long, env = "ZEROSCALE_URL")]
    pub url: Option<String>,
    /// Print the request, the response head, the cold-start wait and the pod that
    /// answered, on stderr.
    #[arg(short, long)]
    pub verbose: bool,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub dev: DevTarget,
}

impl Args {
    /// The request the arguments describe, for Function `name.namespace`.
    pub fn request(&self, namespace: &str) -> Result<Request<Full<Bytes>>> {
        let body = match self.data.as_deref() {
            None => Bytes::new(),
            Some(data) => match data.strip_prefix('@') {
                Some(file) => {
                    std::fs::read(Path::new(file))
                        .map(Bytes::from)
                        .map_err(|source| Error::Io {
                            what: format!("reading {file}"),
                            source,
                        })?
                }
                None => Bytes::copy_from_slice(data.as_bytes()),
            },
        };
        let method = match (&self.method, &self.data) {
            (Some(method), _) => Method::from_bytes(method.to_uppercase().as_bytes())
                .map_err(|_| Error::Usage(format!("-X {method}: not an HTTP method")))?,
            (None, Some(_)) => Method::POST,
            (None, None) => Method::GET,
        };
        let path = if self.path.starts_with('/') {
            self.path.clone()
        } else {
            format!("/{}", self.path)
        };
        let mut request = Request::builder()
            .method(method)
            .uri(&path)
            .header(HOST, format!("{}.{namespace}", self.name));
        for header in &self.headers {
            let bad = || Error::Usage(format!("-H {header}: expected `Name: value`"));
            let (name, value) = header.split_once(':').ok_or_else(bad)?;
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
            request = request.header(name, value);
        }
        request
            .body(Full::new(body))
            .map_err(|e| Error::Usage(format!("building the request: {e}")))
    }
}

/// What `invoke` learned besides the response.
struct Sent {
    response: Response<Bytes>,
    took: Duration,
}

/// Calls a cluster's Function: through `url` when given, else over a port-forward to a
/// ready activator pod.
pub async fn run(
    cluster: &Cluster,
    args: &Args,
    out: &mut dyn Write,
    verbose: &mut dyn Write,
) -> Result<()> {
    let function = cluster.function(&args.name).await?;
    let request = args.request(&cluster.namespace)?;
    let sent = match &args.url {
        Some(url) => {
            log(args, verbose, format_args!("calling {url}"));
            send_to_url(url, request).await?
        }
        None => {
            let pods = activator::pods(cluster, &args.name).await?;
            let pod = pods
                .first()
                .ok_or_else(|| Error::NoActivator(args.name.clone()))?;
            log(
                args,
                verbose,
                format_args!(
                    "port-forwarding to activator pod {}/{}:{}",
                    pod.namespace, pod.name, pod.http_port
                ),
            );
            let pods_api: Api<Pod> = Api::namespaced(cluster.client.clone(), &pod.namespace);
            let forward_error = |reason: String| Error::PortForward {
                pod: pod.name.clone(),
                reason,
            };
            let mut forwarder = pods_api
                .portforward(&pod.name, &[pod.http_port])
                .await
                .map_err(|source| {
                    Error::api("create", "pods/portforward", Some(&pod.namespace), source)
                })?;
            let stream = forwarder
                .take_stream(pod.http_port)
                .ok_or_else(|| forward_error("no stream for the port".into()))?;
            let started = Instant::now();
            let response = exchange::exchange(stream, request).await?;
            let took = started.elapsed();
            drop(forwarder);
            Sent { response, took }
        }
    };
    let answered = if args.verbose {
        answering_pods(cluster, &args.name).await
    } else {
        String::new()
    };
    report(args, &function, sent, &answered, out, verbose)
}

/// Calls a Function of a running `zeroscale dev`.
pub async fn run_dev(
    dev: &DevEndpoint,
    namespace: &str,
    args: &Args,
    out: &mut dyn Write,
    verbose: &mut dyn Write,
) -> Result<()> {
    let function = match &dev.admin {
        Some(_) => dev.function(namespace, &args.name).await?,
        None => Function::new(&args.name, zeroscale_api::FunctionSpec::with_image("")),
    };
    let request = args.request(namespace)?;
    log(
        args,
        verbose,
        format_args!("calling zeroscale dev at {}", dev.url),
    );
    let sent = send_to_url(&dev.url, request).await?;
    report(args, &function, sent, "", out, verbose)
}

async fn send_to_url(url: &str, request: Request<Full<Bytes>>) -> Result<Sent> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Error::Usage(format!("--url {url}: {e}")))?;
    let stream = exchange::connect(&uri).await?;
    let started = Instant::now();
    let response = exchange::exchange(stream, request).await?;
    Ok(Sent {
        response,
        took: started.elapsed(),
    })
}

/// Which pods could have answered: the Function's ready pods after the call.
async fn answering_pods(cluster: &Cluster, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let selector = format!("{}={name}", keys::FUNCTION_LABEL);
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => {
            let names: Vec<String> = list.items.iter().map(ResourceExt::name_any).collect();
            match names.as_slice() {
                [] => "no pod (it may have scaled to zero since)".into(),
                [one] => format!("pod {one}"),
                many => format!("one of pods {}", many.join(", ")),
            }
        }
        Err(error) => format!("unknown ({error})"),
    }
}

fn log(args: &Args, verbose: &mut dyn Write, line: std::fmt::Arguments<'_>) {
    if args.verbose {
        let _ = writeln!(verbose, "* {line}");
    }
}

/// Prints the body on `out` and, with -v, the exchange on `verbose`; an error status
/// becomes an error naming the activator's cause.
fn report(
    args: &Args,
    function: &Function,
    sent: Sent,
    answered: &str,
    out: &mut dyn Write,
    verbose: &mut dyn Write,
) -> Result<()> {
    let Sent { response, took } = sent;
    if args.verbose {
        let _ = writeln!(verbose, "< {:?} {}", response.version(), response.status());
        for (name, value) in response.headers() {
            let _ = writeln!(
                verbose,
                "< {name}: {}",
                value.to_str().unwrap_or("<binary>")
            );
        }
        let at_zero = function
            .status
            .as_ref()
            .is_some_and(|s| s.ready_replicas.unwrap_or(0) == 0);
        let wait = exchange_wait(took);
        if at_zero {
            let _ = writeln!(
                verbose,
                "* cold start: the Function was at zero; answered after {wait}"
            );
        } else {
            let _ = writeln!(verbose, "* warm: answered after {wait}");
        }
        if !answered.is_empty() {
            let _ = writeln!(verbose, "* answered by {answered}");
        }
    }
    out.write_all(response.body()).map_err(Error::Output)?;
    if !response.body().ends_with(b"\n") && !response.body().is_empty() {
        let _ = writeln!(out);
    }
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let cause = response
            .headers()
            .get("x-zeroscale-error")
            .and_then(|v| v.to_str().ok())
            .map(|cause| format!("the activator says: {cause}"))
            .unwrap_or_else(|| "the Function answered with an error".into());
        return Err(Error::HttpStatus {
            url: format!("Function {}", args.name),
            status,
            body: cause,
        });
    }
    Ok(())
}

fn exchange_wait(took: Duration) -> String {
    super::render::seconds(took.as_secs_f64())
}
