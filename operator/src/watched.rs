//! The Functions the running controllers watch, one store per controller (per watched
//! namespace, or one for all). The controllers decide host claims over all of them, as
//! the activator does, and the autoscaler loop scales them without watches of its own.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kube::runtime::reflector::{ObjectRef, Store};
use zeroscale_api::Function;

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
