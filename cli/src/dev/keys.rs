//! API keys in `zeroscale dev`, which has no Secrets: the Secret a Function's
//! `spec.auth.apiKeys.secretRef` names is a directory under `--secrets-dir`, laid out as
//! Kubernetes mounts a Secret (one file per key, the file name naming the key's holder).
//! Read again at each manifest reload, so an added or removed key counts within one
//! reload period. JWTs need nothing here: the activator fetches JWKS URLs itself.

use std::path::Path;

use zeroscale_activator::auth::{Digest, Gate, digest};
use zeroscale_api::Function;
use zeroscale_api::routing::FunctionKey;

/// Gives every Function with API keys the digests of the files in its Secret's directory.
pub(super) fn sync(functions: &[Function], gate: &Gate, secrets_dir: &Path) {
    for function in functions {
        let Some(api_keys) = function
            .spec
            .auth
            .as_ref()
            .and_then(|auth| auth.api_keys.as_ref())
        else {
            continue;
        };
        let (Some(namespace), Some(name)) = (&function.metadata.namespace, &function.metadata.name)
        else {
            continue;
        };
        let digests = read_keys(&secrets_dir.join(&api_keys.secret_ref.name));
        gate.set_api_keys(&FunctionKey::new(namespace, name), digests);
    }
}

/// Digests of the regular files in `dir`; none when it cannot be read.
fn read_keys(dir: &Path) -> Vec<Digest> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .filter_map(|entry| std::fs::read(entry.path()).ok())
        .map(|key| digest(&key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroscale_api::FunctionSpec;
    use zeroscale_api::auth::{ApiKeysAuth, AuthSpec, SecretRef};

    #[test]
    fn keys_are_the_files_of_the_secrets_directory() {
        let dir = std::env::temp_dir().join(format!("zeroscale-dev-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("hello-keys")).expect("dir");
        std::fs::write(dir.join("hello-keys/alice"), "s3cret\n").expect("key");
        std::fs::write(dir.join("hello-keys/bob"), "other").expect("key");
        assert_eq!(
            read_keys(&dir.join("hello-keys")).len(),
            2,
            "one digest per file"
        );
        assert!(read_keys(&dir.join("missing")).is_empty());

        let mut function = Function::new("hello", FunctionSpec::with_image("x"));
        function.metadata.namespace = Some("default".into());
        function.spec.auth = Some(AuthSpec {
            api_keys: Some(ApiKeysAuth {
                secret_ref: SecretRef {
                    name: "hello-keys".into(),
                },
                header: None,
            }),
            jwt: None,
        });
        // Does not panic and reads the directory; what the gate does with it is the
        // activator's test.
        sync(&[function], &Gate::default(), &dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
