//! Opens a client for the kubeconfig context the user chose, and finds Functions by name
//! with the errors a person can act on.

use kube::api::ListParams;
use kube::config::{Config, KubeConfigOptions, KubeconfigError};
use kube::{Api, Client, ResourceExt};
use zeroscale_api::Function;

use super::{Error, FUNCTIONS, Result, Target};

/// A client of the chosen context and the namespace commands act in.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
}

impl Cluster {
    /// The Functions API in the command's namespace.
    pub fn functions(&self) -> Api<Function> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The Function `name`; when it does not exist the error lists the names that come
    /// close in the namespace.
    pub async fn function(&self, name: &str) -> Result<Function> {
        let api = self.functions();
        match api.get_opt(name).await {
            Ok(Some(function)) => Ok(function),
            Ok(None) => {
                // A missing CRD also answers 404 here; the list tells the two apart.
                let existing = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|source| Error::api("list", FUNCTIONS, Some(&self.namespace), source))?
                    .items
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect();
                Err(Error::NotFound {
                    name: name.to_owned(),
                    namespace: self.namespace.clone(),
                    near: near_names(name, existing),
                })
            }
            Err(source) => Err(Error::api("get", FUNCTIONS, Some(&self.namespace), source)),
        }
    }
}

/// Connects to the context `target` names (the current one by default), or to the
/// cluster this process runs in when there is no kubeconfig.
pub async fn connect(target: &Target) -> Result<Cluster> {
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match Config::from_kubeconfig(&options).await {
        Ok(config) => config,
        Err(error) if target.context.is_none() && is_absent(&error) => {
            Config::incluster().map_err(|_| Error::NoKubeconfig)?
        }
        Err(source) => {
            return Err(Error::Kubeconfig {
                context: target.context.clone(),
                source,
            });
        }
    };
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(Error::Connect)?;
    Ok(Cluster { client, namespace })
}

/// Whether the kubeconfig is missing altogether, rather than broken.
fn is_absent(error: &KubeconfigError) -> bool {
    match error {
        KubeconfigError::FindPath => true,
        KubeconfigError::ReadConfig(io, _) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// The names in `existing` that `name` may be a typo of, closest first: at most three,
/// each within a third of the name's length in edits, or sharing its start.
pub fn near_names(name: &str, existing: Vec<String>) -> Vec<String> {
    let limit = (name.chars().count() / 3).max(2);
    let mut near: Vec<(usize, String)> = existing
        .into_iter()
        .filter_map(|other| {
            let distance = edit_distance(name, &other);
            let prefix = other.starts_with(name) || name.starts_with(other.as_str());
            (distance <= limit || prefix).then_some((distance, other))
        })
        .collect();
    near.sort();
    near.into_iter().take(3).map(|(_, name)| name).collect()
}

/// Levenshtein distance of two short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_names_are_typos_and_prefixes_closest_first() {
        let existing = ["hello", "hallo", "helloworld", "payments", "orders"]
            .map(String::from)
            .to_vec();
        assert_eq!(near_names("helo", existing), vec!["hello", "hallo"]);
    }

    #[test]
    fn unrelated_names_are_not_suggested() {
        let existing = vec!["payments".to_owned()];
        assert!(near_names("hello", existing).is_empty());
    }
}
