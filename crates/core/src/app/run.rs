//! [`App::run`], in four steps: check, start, join, stop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};

use super::application::{Hook, RouteStart, RouteTask};
use super::signals::{install_signals, watch_signals};
use super::{App, Health, RouteOptions};
use crate::runtime::WorkerReport;
use crate::settings::Settings;
use crate::{BoxError, Error, Shutdown};

impl App {
    /// Run until shutdown. See [`App`] for the lifecycle.
    ///
    /// # Errors
    ///
    /// A configuration problem (naming the route), a failing startup hook, a failed route,
    /// or a forced shutdown (second signal).
    pub async fn run(self) -> Result<(), Error> {
        let checked = self.check()?;
        let mut running = checked.start().await?;
        let joined = running.join().await;
        running.stop(joined).await
    }

    /// Step 1: the settings, the route names and every route's options are valid.
    fn check(self) -> Result<Checked, Error> {
        let App {
            routes,
            startup,
            shutdown_hooks,
            settings,
            shutdown,
            grace,
            signals,
            health,
        } = self;
        let settings = settings.map_err(Error::Config)?;
        let mut names = HashSet::new();
        let mut tasks = Vec::with_capacity(routes.len());
        for entry in routes {
            let route_error = |cause: BoxError| Error::Route {
                route: entry.name.to_string(),
                cause,
            };
            if !names.insert(entry.name.clone()) {
                return Err(route_error("another route has the same name".into()));
            }
            if let Err(e) = entry.options.validate() {
                return Err(route_error(Box::new(e)));
            }
            match entry.start {
                Ok(task) => tasks.push((entry.name, entry.options, task)),
                Err(e) => return Err(route_error(Box::new(e))),
            }
        }
        Ok(Checked {
            tasks,
            startup,
            stop: Stop {
                shutdown_hooks,
                shutdown,
                grace,
                health,
                signal_task: None,
            },
            settings,
            signals,
        })
    }
}

/// A checked app, not started yet.
struct Checked {
    tasks: Vec<(Arc<str>, RouteOptions, RouteTask)>,
    startup: Vec<Hook>,
    settings: Arc<Settings>,
    signals: bool,
    stop: Stop,
}

/// What the last step needs.
struct Stop {
    shutdown_hooks: Vec<Hook>,
    shutdown: Shutdown,
    grace: Duration,
    health: Health,
    signal_task: Option<JoinHandle<()>>,
}

/// A started app: its routes run.
struct Running {
    set: JoinSet<(Arc<str>, Result<WorkerReport, BoxError>)>,
    /// Route names by task, to name a route whose task panicked.
    task_routes: HashMap<tokio::task::Id, Arc<str>>,
    /// Fired by a second signal.
    force: Shutdown,
    stop: Stop,
}

/// How the routes ended.
struct Joined {
    forced: bool,
    route_error: Option<Error>,
}

impl Checked {
    /// Step 2: install the signal handlers, run the startup hooks, spawn the routes.
    async fn start(self) -> Result<Running, Error> {
        let Checked {
            tasks,
            startup,
            settings,
            signals,
            mut stop,
        } = self;
        let force = Shutdown::new();
        stop.signal_task = signals.then(|| {
            tokio::spawn(watch_signals(
                install_signals(),
                stop.shutdown.clone(),
                force.clone(),
            ))
        });

        for (i, hook) in startup.into_iter().enumerate() {
            if let Err(e) = hook().await {
                tracing::error!(hook = i, error = %e, "startup hook failed; not starting");
                stop.abort_signals();
                return Err(Error::Startup(e));
            }
        }

        let mut set = JoinSet::new();
        let mut task_routes = HashMap::new();
        for (name, options, task) in tasks {
            let start = RouteStart {
                name: name.clone(),
                // A route's own signal: it fires with the app's, and alone when the route's
                // source ends (to flush its partial batches).
                shutdown: stop.shutdown.child(),
                grace: stop.grace,
                settings: settings.clone(),
                readiness: stop.health.register(name.clone()),
                options,
            };
            let spawned = set.spawn({
                let name = name.clone();
                async move { (name, task(start).await) }
            });
            task_routes.insert(spawned.id(), name);
        }
        stop.health.set_started();
        tracing::info!(routes = set.len(), "app started");

        tokio::spawn({
            let (health, shutdown, grace) =
                (stop.health.clone(), stop.shutdown.clone(), stop.grace);
            async move {
                shutdown.triggered().await;
                health.set_stopping();
                tracing::info!(grace_secs = grace.as_secs_f64(), "shutting down gracefully");
            }
        });
        Ok(Running {
            set,
            task_routes,
            force,
            stop,
        })
    }
}

impl Running {
    /// Step 3: wait for every route to end. A failed or panicked route shuts the app down
    /// (fail fast: do not keep serving without it); a second signal aborts what still runs.
    async fn join(&mut self) -> Joined {
        let mut joined = Joined {
            forced: false,
            route_error: None,
        };
        loop {
            tokio::select! {
                next = self.set.join_next() => match next {
                    None => break,
                    Some(Ok((name, Ok(report)))) => {
                        tracing::debug!(route = &*name, ?report, "route finished");
                    }
                    Some(Ok((name, Err(cause)))) => {
                        tracing::error!(route = &*name, error = %cause, "route failed; shutting down");
                        self.fail(&mut joined, name.to_string(), cause);
                    }
                    // Aborted tasks (a forced shutdown) are cancelled, not failed.
                    Some(Err(e)) if e.is_panic() => {
                        let route = self.task_routes.get(&e.id()).map_or("?", |n| &**n).to_owned();
                        let cause = crate::util::panic_message(&*e.into_panic()).to_owned();
                        tracing::error!(route = %route, panic = %cause, "route panicked; shutting down");
                        self.fail(&mut joined, route, format!("route panicked: {cause}").into());
                    }
                    Some(Err(_)) => {}
                },
                () = self.force.triggered(), if !joined.forced => {
                    joined.forced = true;
                    tracing::warn!("second signal: aborting in-flight work");
                    self.set.abort_all();
                }
            }
        }
        joined
    }

    /// Keep the first route failure and shut the app down.
    fn fail(&self, joined: &mut Joined, route: String, cause: BoxError) {
        joined
            .route_error
            .get_or_insert(Error::Route { route, cause });
        self.stop.shutdown.trigger();
    }

    /// Step 4: run the shutdown hooks (not after a forced shutdown) and say how it ended.
    async fn stop(self, joined: Joined) -> Result<(), Error> {
        let mut stop = self.stop;
        stop.shutdown.trigger();
        stop.health.set_stopping();
        if !joined.forced {
            for (i, hook) in std::mem::take(&mut stop.shutdown_hooks)
                .into_iter()
                .enumerate()
            {
                if let Err(e) = hook().await {
                    tracing::error!(hook = i, error = %e, "shutdown hook failed");
                }
            }
        }
        stop.health.set_stopped();
        stop.abort_signals();
        tracing::info!("app stopped");
        if joined.forced {
            return Err(Error::Forced);
        }
        joined.route_error.map_or(Ok(()), Err)
    }
}

impl Stop {
    fn abort_signals(&self) {
        if let Some(task) = &self.signal_task {
            task.abort();
        }
    }
}
