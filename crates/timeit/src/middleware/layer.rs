use std::{borrow::Cow, fmt, sync::Arc};

use metrics::SharedString;
use tower_layer::Layer;

use super::{Config, TimeitService};
use crate::{
    Callback,
    record::{DEFAULT_HISTOGRAM, Keys},
    report::shared_name,
};

/// Times every call of the service it wraps as a transaction called `name`; see the
/// [module docs](crate::middleware).
///
/// Cheap to clone: a name, a histogram name (borrowed or shared strings) and the callback.
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct TimeitLayer<C = ()> {
    name: SharedString,
    histogram: SharedString,
    callback: C,
}

impl TimeitLayer<()> {
    /// A layer timing each call as a transaction called `name`, without a callback.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        TimeitLayer {
            name: shared_name(name),
            histogram: SharedString::const_str(DEFAULT_HISTOGRAM),
            callback: (),
        }
    }
}

impl<C> TimeitLayer<C> {
    /// Sets the async callback that receives each call's [`Report`](crate::Report).
    ///
    /// Each service the layer builds keeps its own clone of the callback, shared (behind an
    /// `Arc`) by the service's clones and by its response futures.
    pub fn callback<C2: Callback>(self, callback: C2) -> TimeitLayer<C2> {
        TimeitLayer {
            name: self.name,
            histogram: self.histogram,
            callback,
        }
    }

    /// Records to the histogram called `name` instead of
    /// [`DEFAULT_HISTOGRAM`](crate::DEFAULT_HISTOGRAM).
    pub fn histogram(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.histogram = shared_name(name);
        self
    }

    /// The transaction's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn config(&self) -> Arc<Config<C>>
    where
        C: Clone,
    {
        Arc::new(Config {
            name: self.name.clone(),
            keys: Keys::new(&self.histogram, &self.name),
            callback: self.callback.clone(),
        })
    }
}

impl<S, C: Clone> Layer<S> for TimeitLayer<C> {
    type Service = TimeitService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeitService::from_config(inner, self.config())
    }
}

impl<C> fmt::Debug for TimeitLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeitLayer")
            .field("name", &&*self.name)
            .field("histogram", &&*self.histogram)
            .field("callback", &std::any::type_name::<C>())
            .finish()
    }
}
