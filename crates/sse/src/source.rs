//! [`SseSource`]: a route's endpoints as one core [`Source`].

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use asyncworker_core::{Error, Source, SourceContext};
use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use url::Url;

use crate::checkpoint::{CheckpointStore, MemoryCheckpoints, load_id};
use crate::config::SseConfig;
use crate::error::SseError;
use crate::event::SseEvent;
use crate::shared::{Checkpoint, Health, Shared, StreamMetrics};
use crate::stream::PathStream;

/// The default interval between checkpoint saves: 100 ms.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// The default bound on deliveries of a requeued event: 3 more after the first.
pub const DEFAULT_MAX_REDELIVERIES: u32 = 3;

/// One route's SSE endpoints — one stream per path, merged — as a [`Source`] of
/// [`SseEvent`]s. See [the crate docs](crate) for what it does on each status, how it
/// reconnects and how settlement moves the checkpoint.
///
/// ```no_run
/// use asyncworker_sse::{SseConfig, SseSource};
///
/// # fn main() -> Result<(), asyncworker_core::Error> {
/// let config = SseConfig::builder("http://172.18.0.31:8080/")
///     .basic_auth("user", "password")
///     .build()?;
/// let source = SseSource::new(&config, ["/v2/events"])?;
/// # let _ = source;
/// # Ok(())
/// # }
/// ```
#[must_use = "a source does nothing until a worker runs it"]
pub struct SseSource {
    config: SseConfig,
    paths: Vec<(Arc<str>, Url)>,
    store: Arc<dyn CheckpointStore>,
    max_redeliveries: u32,
    checkpoint_interval: Duration,
}

impl fmt::Debug for SseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.paths.iter().map(|(_, url)| url.as_str()).collect();
        f.debug_struct("SseSource")
            .field("urls", &urls)
            .field("max_redeliveries", &self.max_redeliveries)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SseSource {
    /// A source reading `paths` (each joined to the config's base URL by
    /// [these rules](crate::config)), with checkpoints in memory.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `paths` is empty, a path is a whole URL, or two paths join to
    /// the same URL.
    pub fn new<I, P>(config: &SseConfig, paths: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let paths = paths
            .into_iter()
            .map(|p| {
                let p = p.as_ref();
                config.url(p).map(|url| (Arc::from(p), url))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if paths.is_empty() {
            return Err(Error::config("an sse route needs at least 1 path"));
        }
        for (i, (_, url)) in paths.iter().enumerate() {
            if paths[..i].iter().any(|(_, other)| other == url) {
                return Err(Error::config(format!(
                    "sse URL {url} is listed twice in one route (each of its events would be read twice)"
                )));
            }
        }
        Ok(SseSource {
            config: config.clone(),
            paths,
            store: Arc::new(MemoryCheckpoints::new()),
            max_redeliveries: DEFAULT_MAX_REDELIVERIES,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
        })
    }

    /// Keep checkpoints in `store` (default: [`MemoryCheckpoints`]); use a
    /// [`FileCheckpoints`](crate::FileCheckpoints) for a worker that resumes after a restart.
    pub fn checkpoint_store(mut self, store: impl CheckpointStore) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// How many more times a requeued event is handed to the handler (default 3). After
    /// that, a requeue rejects it (logged), so the checkpoint can move past it.
    pub fn max_redeliveries(mut self, n: u32) -> Self {
        self.max_redeliveries = n;
        self
    }

    /// Save the checkpoint at most this often (default 100 ms; zero: after every move). The
    /// last checkpoint is always saved when the stream ends. A crash loses at most this much
    /// progress, which a replaying server sends again.
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    /// The streams' URLs.
    pub fn urls(&self) -> impl Iterator<Item = &Url> {
        self.paths.iter().map(|(_, url)| url)
    }

    /// The checkpoint key of `path` on `route`: `"<route> <path>"`.
    pub fn checkpoint_key(route: &str, path: &str) -> String {
        format!("{route} {path}")
    }
}

impl Source for SseSource {
    type Message = SseEvent;
    type Error = SseError;
    type Stream = SseStream;

    fn reports_readiness(&self) -> bool {
        true
    }

    fn into_stream(self, cx: SourceContext) -> SseStream {
        let health = Arc::new(Health::new(cx.readiness().clone(), self.paths.len()));
        let mut streams = SelectAll::new();
        for (path, url) in self.paths {
            let key = SseSource::checkpoint_key(cx.route(), &path);
            let (checkpoint, load_error) = match load_id(&*self.store, &key) {
                Ok(id) => (id, None),
                Err(source) => (None, Some(source)),
            };
            if let Some(id) = &checkpoint {
                tracing::info!(route = cx.route(), url = %url, checkpoint = %id, "resuming from the stored checkpoint");
            }
            let metrics = StreamMetrics::new(cx.route(), &path);
            let shared = Arc::new(Shared::new(
                checkpoint,
                self.max_redeliveries,
                metrics,
                url.to_string(),
            ));
            cx.spawn(write_checkpoints(
                Arc::clone(&self.store),
                key.clone(),
                Arc::clone(&shared.checkpoint),
                Arc::clone(&shared.gone),
                self.checkpoint_interval,
            ));
            // Boxed: `unfold` moves its state in and out at every item.
            let mut stream = Box::new(PathStream::new(
                shared,
                self.config.clone(),
                url,
                path,
                cx.shutdown().clone(),
                Arc::clone(&health),
            ));
            if let Some(source) = load_error {
                // Never start from nothing: that would lose the position (and overwrite the
                // stored one). The stream reports the error and loads again until it can.
                stream.load_checkpoint_first(Arc::clone(&self.store), key, source);
            }
            let events = futures::stream::unfold(stream, |mut stream| async move {
                let item = stream.next().await?;
                Some((item, stream))
            });
            let events: BoxStream<'static, _> = events.boxed();
            streams.push(events);
        }
        SseStream { streams }
    }
}

/// Save each new checkpoint, off the handler's path, at most once per `interval` (the
/// latest one: skipping one in between loses nothing), until the stream and all its events
/// are gone (`gone`); then the last one.
async fn write_checkpoints(
    store: Arc<dyn CheckpointStore>,
    key: String,
    checkpoint: Arc<Checkpoint>,
    gone: Arc<tokio::sync::Notify>,
    interval: Duration,
) {
    let mut saved = checkpoint.get();
    loop {
        let mut closed = tokio::select! {
            _ = checkpoint.changed.notified() => false,
            _ = gone.notified() => true,
        };
        // Let more settlements land before saving, unless the stream is gone.
        if !closed && !interval.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = gone.notified() => closed = true,
            }
        }
        let id = checkpoint.get();
        if id != saved {
            let (store, k) = (Arc::clone(&store), key.clone());
            let value = id.clone();
            let save = move || store.save(&k, value.as_deref().unwrap_or(""));
            match tokio::task::spawn_blocking(save).await {
                Ok(Ok(())) => saved = id,
                Ok(Err(error)) => {
                    tracing::warn!(key = %key, %error, "could not save the sse checkpoint")
                }
                Err(error) => {
                    tracing::warn!(key = %key, %error, "the sse checkpoint save panicked")
                }
            }
        }
        if closed {
            break;
        }
    }
}

/// The merged events of a route's streams, from [`SseSource`]'s [`Source::into_stream`].
#[must_use = "streams do nothing unless polled"]
pub struct SseStream {
    streams: SelectAll<BoxStream<'static, Result<SseEvent, SseError>>>,
}

impl fmt::Debug for SseStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseStream")
            .field("streams", &self.streams.len())
            .finish()
    }
}

impl Stream for SseStream {
    type Item = Result<SseEvent, SseError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.streams.poll_next_unpin(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_listed_twice_is_a_config_error() {
        let config = SseConfig::builder("http://h/api").build().unwrap();
        assert!(SseSource::new(&config, ["/a", "/b"]).is_ok());
        // Two streams of one URL would read every event twice, and "/a" twice would share
        // a checkpoint file.
        for paths in [["/a", "/a"], ["/a", "a"]] {
            let err = SseSource::new(&config, paths).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
            assert!(err.to_string().contains("http://h/api/a"), "{err}");
        }
        assert!(SseSource::new(&config, Vec::<&str>::new()).is_err());
    }
}
