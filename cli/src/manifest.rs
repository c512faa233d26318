//! Function manifests on disk, read the way `kubectl apply -f` reads them: a path is a
//! file or a folder of `.yaml`/`.yml` files (not recursive), a file holds one or more
//! YAML documents, and documents of other kinds are skipped.

use std::path::{Path, PathBuf};

use zeroscale_api::Function;

use crate::error::{Error, Result};

/// The manifest files `path` names: itself, or the YAML files directly in it, sorted.
pub fn files(path: &Path) -> Result<Vec<PathBuf>> {
    let read_error = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(read_error)?.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_error)? {
        let file = entry.map_err(read_error)?.path();
        if matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) && file.is_file()
        {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// The Functions in one manifest file, with the namespace defaulted to `default`.
/// Documents of other kinds are left out and named in `skipped`.
#[derive(Debug, Default)]
pub struct Manifest {
    pub functions: Vec<Function>,
    pub skipped: Vec<String>,
}

/// Reads the manifest at `path`.
pub fn load(path: &Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// The first fields of any Kubernetes manifest, enough to tell what a document is.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Head {
    api_version: String,
    kind: String,
    metadata: HeadMetadata,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct HeadMetadata {
    name: String,
}

fn parse(path: &Path, text: &str) -> Result<Manifest> {
    let mut manifest = Manifest::default();
    // Each document is read twice, typed both times: untyped YAML would turn scalars
    // such as `y` or `1.10` into booleans and numbers where the schema wants strings.
    for (index, document) in documents(text).into_iter().enumerate() {
        let invalid = |reason: String| Error::Function {
            path: path.to_owned(),
            document: index + 1,
            reason,
        };
        let head: Option<Head> = serde_saphyr::from_str(document).map_err(|e| Error::Yaml {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let Some(head) = head else {
            continue;
        };
        if head.kind != "Function" || !head.api_version.starts_with("zeroscale.dev/") {
            let kind = if head.kind.is_empty() {
                "?"
            } else {
                &head.kind
            };
            manifest
                .skipped
                .push(format!("{kind} {}", head.metadata.name));
            continue;
        }
        if head.metadata.name.is_empty() {
            return Err(invalid("metadata.name is missing".into()));
        }
        let mut function: Function =
            serde_saphyr::from_str(document).map_err(|e| invalid(e.to_string()))?;
        function
            .metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        manifest.functions.push(function);
    }
    Ok(manifest)
}

/// The YAML documents of a file, split at `---` lines.
fn documents(text: &str) -> Vec<&str> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let marker = line.trim_end();
        if marker == "---" || marker.starts_with("--- ") || marker.starts_with("---\t") {
            documents.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    documents.push(&text[start..]);
    documents
        .into_iter()
        .filter(|document| {
            document
                .lines()
                .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Manifest> {
        parse(Path::new("test.yaml"), text)
    }

    #[test]
    fn reads_every_function_and_skips_other_kinds() {
        let manifest = parse_text(
            "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata: {name: a}\nspec: {image: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: redis}\n---\napiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata: {name: b, namespace: team}\nspec: {image: y}\n",
        )
        .expect("parses");
        let names: Vec<_> = manifest
            .functions
            .iter()
            .map(|f| {
                (
                    f.metadata.namespace.clone().unwrap_or_default(),
                    f.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("default".to_owned(), "a".to_owned()),
                ("team".to_owned(), "b".to_owned())
            ]
        );
        assert_eq!(manifest.skipped, ["Service redis"]);
    }

    #[test]
    fn documents_split_at_separator_lines_only() {
        let text = "a: 1\n---\nb: '---'\n--- # comment\n\n# only a comment\n---\nc: 3\n";
        assert_eq!(documents(text), ["a: 1\n", "b: '---'\n", "c: 3\n"]);
    }

    #[test]
    fn a_function_with_a_misspelled_type_names_the_document() {
        let error = parse_text(
            "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata: {name: a}\nspec: {image: x, port: eighty}\n",
        )
        .expect_err("port is not a number");
        assert!(error.to_string().contains("document 1"), "{error}");
    }

    #[test]
    fn a_function_without_a_name_is_refused() {
        let error =
            parse_text("apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nspec: {image: x}\n")
                .expect_err("no name");
        assert!(error.to_string().contains("metadata.name"), "{error}");
    }
}
