//! The Functions the running controllers watch, one store per controller (per watched
//! namespace, or one for all). The controllers decide host claims over all of them, as
//! the activator does, and the autoscaler loop scales them without watches of its own.
//! Also [`WatchTask`], which ties a background watch to the term of leadership that
//! started it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kube::runtime::reflector::{ObjectRef, Store};
use zeroscale_api::Function;
use zeroscale_api::routing::FunctionKey;

/// The stores of every running controller, shared by the controllers' and the
/// autoscaler's contexts.
#[derive(Default)]
pub struct WatchedFunctions {
    stores: Mutex<Vec<Store<Function>>>,
}

impl WatchedFunctions {
    /// Adds the Functions a controller watches.
    pub fn add(&self, functions: Store<Function>) {
        self.stores().push(functions);
    }

    /// Every watched Function, as the stores hold it now.
    pub(crate) fn all(&self) -> Vec<Arc<Function>> {
        self.stores().iter().flat_map(Store::state).collect()
    }

    /// The watched Functions that `keep` accepts, tested under the stores' locks so the
    /// others are not even cloned.
    pub(crate) fn filter(&self, keep: impl Fn(&Function) -> bool) -> Vec<Arc<Function>> {
        self.stores()
            .iter()
            .flat_map(|functions| functions.state_filter(|function| keep(function)))
            .collect()
    }

    /// The watched Function named by `key`, if a store holds it.
    pub fn function(&self, key: &FunctionKey) -> Option<Arc<Function>> {
        self.get(&ObjectRef::new(&key.name).within(&key.namespace))
    }

    /// The watched Function `key`, if a store holds it.
    pub(crate) fn get(&self, key: &ObjectRef<Function>) -> Option<Arc<Function>> {
        self.stores()
            .iter()
            .find_map(|functions| functions.get(key))
    }

    fn stores(&self) -> MutexGuard<'_, Vec<Store<Function>>> {
        // A poisoned list still holds valid stores.
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A background watch that stops when this handle is dropped, so a watch started for
/// one term of leadership ends with that term instead of running on after a lost
/// Lease.
pub(crate) struct WatchTask(tokio::task::JoinHandle<()>);

impl WatchTask {
    /// Drives `stream` (a reflector feeding a store) in the background.
    pub(crate) fn spawn<S>(stream: S) -> Self
    where
        S: futures::Stream + Send + 'static,
    {
        use futures::StreamExt;
        Self(tokio::spawn(stream.for_each(|_| async {})))
    }
}

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::WatchTask;

    #[tokio::test]
    async fn a_dropped_watch_task_stops_its_stream() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<()>(1);
        let task = WatchTask::spawn(futures::stream::unfold(receiver, |mut receiver| async {
            receiver.recv().await.map(|item| (item, receiver))
        }));
        drop(task);
        tokio::time::timeout(std::time::Duration::from_secs(5), sender.closed())
            .await
            .expect("dropping the task drops the stream and its receiver");
    }
}
