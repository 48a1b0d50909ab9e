//! Liveness and readiness of an [`App`](super::App), for health endpoints.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Readiness, Shutdown};

/// Liveness and readiness of an [`App`](super::App), for health endpoints. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Default)]
struct HealthInner {
    state: Mutex<HealthState>,
    /// The app's shutdown signal: readiness ends the moment it fires, not when the app's
    /// tasks next get to run.
    shutdown: Shutdown,
}

#[derive(Default)]
struct HealthState {
    started: bool,
    stopping: bool,
    stopped: bool,
    routes: Vec<(Arc<str>, Readiness)>,
}

/// One route's health.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteHealth {
    /// The route's name.
    pub name: String,
    /// Whether it is connected and consuming.
    pub ready: bool,
}

impl Health {
    pub(super) fn new(shutdown: Shutdown) -> Self {
        Health {
            inner: Arc::new(HealthInner {
                state: Mutex::default(),
                shutdown,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HealthState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process is running and not yet stopped.
    pub fn is_live(&self) -> bool {
        !self.lock().stopped
    }

    /// Startup hooks are done, shutdown has not begun, and every route is consuming.
    pub fn is_ready(&self) -> bool {
        let state = self.lock();
        state.started
            && !state.stopping
            && !self.inner.shutdown.is_triggered()
            && state.routes.iter().all(|(_, r)| r.get())
    }

    /// Each route's readiness.
    pub fn routes(&self) -> Vec<RouteHealth> {
        self.lock()
            .routes
            .iter()
            .map(|(name, ready)| RouteHealth {
                name: name.to_string(),
                ready: ready.get(),
            })
            .collect()
    }

    /// A readiness flag for the route `name`, counted from now on.
    pub(super) fn register(&self, name: Arc<str>) -> Readiness {
        let ready = Readiness::default();
        self.lock().routes.push((name, ready.clone()));
        ready
    }

    /// The startup hooks are done and the routes are running.
    pub(super) fn set_started(&self) {
        self.lock().started = true;
    }

    /// Shutdown has begun.
    pub(super) fn set_stopping(&self) {
        self.lock().stopping = true;
    }

    /// Everything has stopped.
    pub(super) fn set_stopped(&self) {
        self.lock().stopped = true;
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("live", &self.is_live())
            .field("ready", &self.is_ready())
            .field("routes", &self.routes())
            .finish()
    }
}
