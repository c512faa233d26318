//! Function manifests on disk, read the way `kubectl apply -f` reads them: a path is a
//! file or a folder of `.yaml`/`.yml` files (not recursive), a file holds one or more
//! YAML documents, and documents of other kinds are skipped. Fields the Function's
//! schema does not declare are refused, as kubectl's strict field validation does.

use std::path::{Path, PathBuf};

use zeroscale_api::Function;

use crate::error::{Error, Result};

mod strict;

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
    // Each document is read typed: untyped YAML would turn scalars such as `y` or `1.10`
    // into booleans and numbers where the schema wants strings. Only the check for
    // unknown fields, which looks at names alone, reads it untyped.
    for (index, (offset, document)) in documents(text).into_iter().enumerate() {
        let invalid = |reason: String| Error::Function {
            path: path.to_owned(),
            document: index + 1,
            reason,
        };
        let head: Option<Head> = serde_saphyr::from_str(document).map_err(|error| {
            let (line, column, reason) = located(&error, document, offset);
            Error::Yaml {
                path: path.to_owned(),
                line,
                column,
                reason,
            }
        })?;
        let Some(head) = head else {
            continue;
        };
        let version = match head.api_version.split_once('/') {
            Some(("zeroscale.dev", version)) if head.kind == "Function" => version,
            _ => {
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
        };
        if head.metadata.name.is_empty() {
            return Err(invalid("metadata.name is missing".into()));
        }
        let typed_error = |error: serde_saphyr::Error| {
            let (line, column, reason) = located(&error, document, offset);
            invalid(format!("line {line}, column {column}: {reason}"))
        };
        let fields: serde_json::Value = serde_saphyr::from_str(document).map_err(typed_error)?;
        let unknown = strict::unknown_fields(&fields, version).map_err(invalid)?;
        if !unknown.is_empty() {
            return Err(invalid(
                unknown
                    .iter()
                    .map(|field| format!("{field}: unknown field"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
        let mut function: Function = serde_saphyr::from_str(document).map_err(typed_error)?;
        function
            .metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        manifest.functions.push(function);
    }
    Ok(manifest)
}

/// Where in the file a parse error of `document` (which starts after `offset` lines)
/// is, and what it says: line, column (both from 1, 0 when unknown) and the message
/// with the line it is about.
fn located(error: &serde_saphyr::Error, document: &str, offset: usize) -> (usize, usize, String) {
    use serde_saphyr::MessageFormatter as _;
    let error = error.without_snippet();
    let mut reason = serde_saphyr::DefaultMessageFormatter
        .format_message(error)
        .replace(char::is_control, " ");
    let Some(location) = error.location() else {
        return (0, 0, reason);
    };
    let line = usize::try_from(location.line()).unwrap_or(usize::MAX);
    let column = usize::try_from(location.column()).unwrap_or(usize::MAX);
    if let Some(text) = document
        .lines()
        .nth(line.saturating_sub(1))
        .map(str::trim)
        .filter(|text| !text.is_empty())
    {
        reason = format!("{reason}: `{}`", text.replace(char::is_control, " "));
    }
    (line.saturating_add(offset), column, reason)
}

/// The YAML documents of a file, split at `---` lines, each with the number of lines
/// before it.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let mut start = (0, 0);
    let mut offset = 0;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let marker = line.trim_end();
        if marker == "---" || marker.starts_with("--- ") || marker.starts_with("---\t") {
            documents.push((start.0, &text[start.1..offset]));
            start = (number + 1, offset + line.len());
        }
        offset += line.len();
    }
    documents.push((start.0, &text[start.1..]));
    documents
        .into_iter()
        .filter(|(_, document)| {
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
        assert_eq!(
            documents(text),
            [(0, "a: 1\n"), (2, "b: '---'\n"), (7, "c: 3\n")]
        );
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
    fn broken_yaml_names_the_line_and_column_in_the_file() {
        let error = parse_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata: {name: b\nspec: {image: x}\n",
        )
        .expect_err("an unclosed flow mapping");
        let Error::Yaml { line, column, .. } = &error else {
            panic!("not a YAML error: {error}");
        };
        assert!((7..=9).contains(line), "{error}");
        assert!(*column > 0, "{error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("test.yaml:{line}:{column}: ")),
            "{error}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_paths() {
        let error = parse_text(
            "apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nmetadata: {name: a}\nspec:\n  image: x\n  scalling: {minReplicas: 1}\n",
        )
        .expect_err("scalling is not a field");
        assert!(
            error.to_string().contains("spec.scalling: unknown field"),
            "{error}"
        );
    }

    #[test]
    fn a_function_without_a_name_is_refused() {
        let error =
            parse_text("apiVersion: zeroscale.dev/v1alpha1\nkind: Function\nspec: {image: x}\n")
                .expect_err("no name");
        assert!(error.to_string().contains("metadata.name"), "{error}");
    }
}
