//! A running `zeroscale dev` as `list`, `describe` and `invoke` see it: found through
//! the state file it writes while it runs (or `--dev URL`), its Functions and stats read
//! from its admin address.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroscale_api::Function;
use zeroscale_api::stats::StatsReport;
use zeroscale_api::usage::UsageReport;

use super::{Error, Result, activator, http};

/// The admin route where `zeroscale dev` serves its Functions, with their status.
pub const FUNCTIONS_ROUTE: &str = "/functions";

/// The admin route where `zeroscale dev` (and the operator) serve usage per Function.
pub const USAGE_ROUTE: &str = "/usage";

/// What `zeroscale dev` writes to [`state_path`] while it runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DevState {
    pub pid: u32,
    /// Where it takes requests for the Functions.
    pub url: String,
    /// Where it serves `/functions`, `/stats` and `/metrics`.
    pub admin: String,
}

/// Where the state file lives: `$ZEROSCALE_DEV_STATE`, else `zeroscale-dev.json` in
/// `$XDG_RUNTIME_DIR`, else `/tmp/zeroscale-dev-$USER.json`.
pub fn state_path() -> PathBuf {
    if let Some(path) = std::env::var_os("ZEROSCALE_DEV_STATE") {
        return PathBuf::from(path);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&dir).join("zeroscale-dev.json");
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    std::env::temp_dir().join(format!("zeroscale-dev-{user}.json"))
}

/// The state file of this `zeroscale dev`: written on creation, removed on drop.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// Writes `state` to [`state_path`].
    pub fn write(state: &DevState) -> Result<Self> {
        let path = state_path();
        let io_error = |source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        };
        let text = serde_json::to_string(state).map_err(|e| Error::Encode(e.to_string()))?;
        std::fs::write(&path, text).map_err(io_error)?;
        Ok(Self { path })
    }
}

impl Drop for StateFile {
    /// Removes the file unless another `zeroscale dev` started since has replaced it.
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|text| serde_json::from_str::<DevState>(&text).ok())
            .is_some_and(|state| state.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A `zeroscale dev` to talk to.
#[derive(Clone, Debug, PartialEq)]
pub struct DevEndpoint {
    pub url: String,
    /// None when it was named by `--dev URL` and no state file matches it.
    pub admin: Option<String>,
}

impl DevEndpoint {
    /// The one `--dev` names: `url`, or when it is empty the one in the state file.
    pub fn resolve(url: &str) -> Result<Self> {
        let path = state_path();
        let state: Option<DevState> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        let url = url.trim_end_matches('/');
        match state {
            Some(state) if url.is_empty() || state.url == url => Ok(Self {
                url: state.url,
                admin: Some(state.admin),
            }),
            _ if url.is_empty() => Err(Error::NoDev(path)),
            _ => Ok(Self {
                url: url.to_owned(),
                admin: None,
            }),
        }
    }

    fn admin(&self) -> Result<&str> {
        self.admin.as_deref().ok_or_else(|| {
            Error::Usage(format!(
                "no admin address known for the zeroscale dev at {}: pass --dev with no URL to use the one it is running with",
                self.url
            ))
        })
    }

    /// Its Functions, with their status.
    pub async fn functions(&self) -> Result<Vec<Function>> {
        let url = format!("{}{FUNCTIONS_ROUTE}", self.admin()?);
        let text = self.get(&url).await?;
        serde_json::from_str(&text).map_err(|e| Error::HttpBody {
            url,
            reason: e.to_string(),
        })
    }

    /// Its Function `namespace/name`; when it has none, the error names the near ones.
    pub async fn function(&self, namespace: &str, name: &str) -> Result<Function> {
        let functions = self.functions().await?;
        let names = functions
            .iter()
            .filter(|f| f.metadata.namespace.as_deref() == Some(namespace))
            .filter_map(|f| f.metadata.name.clone());
        let names: Vec<String> = names.collect();
        functions
            .into_iter()
            .find(|f| {
                f.metadata.namespace.as_deref() == Some(namespace)
                    && f.metadata.name.as_deref() == Some(name)
            })
            .ok_or_else(|| Error::NotFound {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                near: super::connect::near_names(name, names),
            })
    }

    /// Its activator's `/stats`.
    pub async fn stats(&self) -> Result<StatsReport> {
        let url = format!("{}/stats", self.admin()?);
        activator::parse_stats(&url, &self.get(&url).await?)
    }

    /// Its usage per Function, over the last `since` (since it started when None).
    pub async fn usage(&self, since: Option<&str>) -> Result<UsageReport> {
        let mut url = format!("{}{USAGE_ROUTE}", self.admin()?);
        if let Some(since) = since {
            url.push_str("?since=");
            url.push_str(since);
        }
        let text = self.get(&url).await?;
        serde_json::from_str(&text).map_err(|e| Error::HttpBody {
            url,
            reason: e.to_string(),
        })
    }

    /// Its `/metrics`, in the Prometheus text format.
    pub async fn metrics(&self) -> Result<String> {
        self.get(&format!("{}/metrics", self.admin()?)).await
    }

    async fn get(&self, url: &str) -> Result<String> {
        http::get_text(url).await.map_err(|error| match error {
            Error::Io { source, .. } => Error::Io {
                what: format!(
                    "reaching zeroscale dev at {url} (is it still running? its state file is {})",
                    state_path().display()
                ),
                source,
            },
            other => other,
        })
    }
}
