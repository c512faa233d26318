//! Test fixtures: Functions built the way the API server would return them.

use kube::api::ObjectMeta;
use zeroscale_api::{Function, FunctionSpec};

/// Builders on [`Function`] for tests: `Function::test("echo").readiness_path("/ready")`.
pub trait FunctionExt: Sized {
    /// A Function named `name` in namespace `default`, with a uid and generation 1.
    fn test(name: &str) -> Self;
    fn readiness_path(self, path: &str) -> Self;
}

impl FunctionExt for Function {
    fn test(name: &str) -> Self {
        let mut function = Function::new(name, FunctionSpec::with_image("example.com/hello:1"));
        function.metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            ..Default::default()
        };
        function
    }

    fn readiness_path(mut self, path: &str) -> Self {
        self.spec.readiness_path = Some(path.into());
        self
    }
}
