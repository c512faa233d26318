//! The activators' load as the autoscaler reads it in a cluster: `/stats` from every
//! ready activator pod that the activator Service's EndpointSlices list.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use zeroscale_api::stats::StatsReport;
use zeroscale_autoscaler::{Error, Result, StatsSource};

use super::AutoscalerConfig;
use crate::watched::WatchTask;

/// Reads `/stats` from every ready activator pod listed in the activator Service's
/// EndpointSlices.
pub struct ActivatorStats {
    slices: Store<EndpointSlice>,
    _watch: WatchTask,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    port: u16,
    timeout: Duration,
}

impl ActivatorStats {
    /// Starts watching the activator Service's EndpointSlices.
    pub fn watch(client: kube::Client, config: &AutoscalerConfig) -> Self {
        let (name, namespace) = config
            .activator_service
            .split_once('.')
            .unwrap_or((config.activator_service.as_str(), "default"));
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let selector = format!("kubernetes.io/service-name={name}");
        let (slices, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().labels(&selector)),
        )
        .default_backoff()
        .touched_objects();
        Self {
            slices,
            _watch: WatchTask::spawn(stream),
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            port: config.activator_admin_port,
            timeout: config.scrape_timeout,
        }
    }

    async fn scrape_one(&self, address: String) -> Result<StatsReport> {
        let uri = format!("http://{address}/stats");
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Scrape {
            uri: uri.clone(),
            source,
        };
        let request = async {
            let response = self
                .http
                .get(uri.parse().map_err(|e| failed(Box::new(e)))?)
                .await
                .map_err(|e| failed(Box::new(e)))?;
            if !response.status().is_success() {
                return Err(Error::ScrapeStatus {
                    uri: uri.clone(),
                    status: response.status().as_u16(),
                });
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| failed(Box::new(e)))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| failed(Box::new(e)))
        };
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| Error::ScrapeTimeout {
                uri: uri.clone(),
                timeout: self.timeout,
            })?
    }
}

impl StatsSource for ActivatorStats {
    async fn scrape(&self) -> Result<Vec<StatsReport>> {
        let addresses: Vec<String> = self
            .slices
            .state()
            .iter()
            .flat_map(|slice| slice.endpoints.clone())
            .filter(|endpoint| {
                endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true)
            })
            .filter_map(|endpoint| endpoint.addresses.first().cloned())
            .map(|ip| match ip.contains(':') {
                true => format!("[{ip}]:{}", self.port),
                false => format!("{ip}:{}", self.port),
            })
            .collect();
        if addresses.is_empty() {
            return Err(Error::NoActivator);
        }
        futures::future::join_all(addresses.into_iter().map(|a| self.scrape_one(a)))
            .await
            .into_iter()
            .collect()
    }
}
