//! One endpoint's stream: connect, check the response, read and parse, reconnect.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use asyncworker_core::{Backoff, BoxError, FailureStreak, Shutdown};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::Instant;
use url::Url;

use crate::checkpoint::{CheckpointStore, load_id};
use crate::config::SseConfig;
use crate::error::SseError;
use crate::event::{EventData, SseEvent};
use crate::parse::{Frame, Parser};
use crate::shared::{Health, Shared};

struct Connection {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    /// The idle timeout after the last bytes (a wake-up in between does not move it).
    idle_at: Instant,
}

/// The state of one endpoint's stream, driven by [`PathStream::next`].
pub(crate) struct PathStream {
    pub(crate) shared: Arc<Shared>,
    config: SseConfig,
    url: Url,
    path: Arc<str>,
    shutdown: Shutdown,
    health: Arc<Health>,
    parser: Parser,
    conn: Option<Connection>,
    frames: VecDeque<Frame>,
    scratch: Vec<Frame>,
    reconnect_at: Option<Instant>,
    schedule: Schedule,
    /// 204: the server asked us to stop.
    stopped: bool,
    /// Ended for good.
    finished: bool,
    /// Told `health` it no longer runs (at a 204, or when it ends).
    left_health: bool,
    /// A parse error, reported after the events completed before it.
    pending_error: Option<SseError>,
    /// The stored checkpoint could not be read: load it before connecting.
    pending_load: Option<(Arc<dyn CheckpointStore>, String)>,
}

impl PathStream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: SseConfig,
        url: Url,
        path: Arc<str>,
        shutdown: Shutdown,
        health: Arc<Health>,
    ) -> Self {
        let parser = Parser::with_max_event_size(config.max_event_size());
        let schedule = Schedule::new(&config);
        PathStream {
            shared,
            config,
            url,
            path,
            shutdown,
            health,
            parser,
            conn: None,
            frames: VecDeque::new(),
            scratch: Vec::new(),
            reconnect_at: None,
            schedule,
            stopped: false,
            finished: false,
            left_health: false,
            pending_error: None,
            pending_load: None,
        }
    }

    /// The stored checkpoint of `key` could not be loaded (`source`): report that, and load
    /// it again (after the long client-error delay) until it can be read; connect only then.
    pub(crate) fn load_checkpoint_first(
        &mut self,
        store: Arc<dyn CheckpointStore>,
        key: String,
        source: BoxError,
    ) {
        let error = SseError::Checkpoint {
            key: key.clone(),
            source,
        };
        self.schedule_reconnect(Some(&error));
        self.pending_error = Some(error);
        self.pending_load = Some((store, key));
    }

    /// Load the stored checkpoint again, off the runtime.
    async fn load_checkpoint(&mut self) -> Result<(), SseError> {
        let Some((store, key)) = self.pending_load.clone() else {
            return Ok(());
        };
        let k = key.clone();
        let loaded = match tokio::task::spawn_blocking(move || load_id(&*store, &k)).await {
            Ok(loaded) => loaded,
            Err(join) => Err(join.into()),
        };
        match loaded {
            Ok(id) => {
                self.pending_load = None;
                tracing::info!(url = %self.url, checkpoint = ?id, "checkpoint loaded");
                self.shared.load_checkpoint(id);
                Ok(())
            }
            Err(source) => Err(SseError::Checkpoint { key, source }),
        }
    }

    /// The next event, or a recoverable error; `None` when the stream ended for good.
    pub(crate) async fn next(&mut self) -> Option<Result<SseEvent, SseError>> {
        loop {
            if self.shutdown.is_triggered() {
                self.finish();
                return None;
            }
            if let Some(event) = self.redelivery() {
                return Some(Ok(event));
            }
            if let Some(frame) = self.frames.pop_front() {
                if let Some(event) = self.frame(frame) {
                    return Some(Ok(event));
                }
                continue;
            }
            if let Some(error) = self.pending_error.take() {
                return Some(Err(error));
            }
            if self.stopped {
                // Requeued events were handed out above; with none waiting the stream ends at
                // once, even while events it handed out are unsettled: the runtime starts its
                // shutdown only when the stream ends, and Bulk holds a partial batch until
                // then, so waiting here for those settlements would wait for the flush
                // interval. They keep settling (and moving the checkpoint) through their own
                // `Arc` of `Shared`; one requeued after this is left for replay.
                if self.shared.end_if_idle() {
                    self.finish();
                    return None;
                }
                continue;
            }
            let Some(conn) = self.conn.as_mut() else {
                if let Some(at) = self.reconnect_at {
                    if Instant::now() < at {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => self.reconnect_at = None,
                            _ = self.shared.notify.notified() => {}
                            _ = self.shutdown.triggered() => {}
                        }
                        continue;
                    }
                    self.reconnect_at = None;
                }
                let shutdown = self.shutdown.triggered();
                let result = tokio::select! {
                    result = async {
                        self.load_checkpoint().await?;
                        self.connect().await
                    } => result,
                    _ = shutdown => continue,
                };
                if let Err(error) = result {
                    self.schedule_reconnect(Some(&error));
                    return Some(Err(error));
                }
                continue;
            };
            let idle = self.config.idle_timeout();
            let read = tokio::select! {
                read = tokio::time::timeout_at(conn.idle_at, conn.body.next()) => read,
                _ = self.shared.notify.notified() => continue,
                _ = self.shutdown.triggered() => continue,
            };
            match read {
                Ok(Some(Ok(bytes))) => {
                    conn.idle_at = after(idle);
                    self.shared.metrics.bytes.increment(bytes.len() as u64);
                    let parsed = self.parser.feed(&bytes, &mut self.scratch);
                    self.frames.extend(self.scratch.drain(..));
                    if let Err(source) = parsed {
                        let error = SseError::Parse {
                            url: self.url.to_string(),
                            source,
                        };
                        self.disconnect();
                        self.schedule_reconnect(Some(&error));
                        self.pending_error = Some(error);
                    }
                }
                Ok(Some(Err(source))) => {
                    let error = SseError::Read {
                        url: self.url.to_string(),
                        source,
                    };
                    self.disconnect();
                    self.schedule_reconnect(Some(&error));
                    return Some(Err(error));
                }
                Ok(None) => {
                    tracing::info!(url = %self.url, "event stream ended; reconnecting");
                    self.disconnect();
                    self.schedule_reconnect(None);
                }
                Err(_elapsed) => {
                    let error = SseError::Idle {
                        url: self.url.to_string(),
                        timeout: idle,
                    };
                    self.disconnect();
                    self.schedule_reconnect(Some(&error));
                    return Some(Err(error));
                }
            }
        }
    }

    fn redelivery(&mut self) -> Option<SseEvent> {
        let next = self.shared.lock().redeliver.pop_front()?;
        tracing::debug!(url = %self.url, id = ?next.data.id, delivery = next.delivery, "event requeued; handing it out again");
        Some(self.shared.event(next.data, next.seq, next.delivery))
    }

    fn frame(&mut self, frame: Frame) -> Option<SseEvent> {
        match frame {
            Frame::Event(raw) => {
                self.shared.metrics.events.increment(1);
                let data = Arc::new(EventData::new(raw, Arc::clone(&self.path)));
                Some(self.shared.admit(data))
            }
            Frame::Id(id) => {
                self.shared.position(id);
                None
            }
            Frame::Retry(retry) => {
                self.schedule.server_retry = Some(retry);
                None
            }
            _ => None,
        }
    }

    async fn connect(&mut self) -> Result<(), SseError> {
        let checkpoint = self.shared.checkpoint.get();
        let url = self.url.to_string();
        let request = self.config.request(&self.url, checkpoint.as_deref());
        tracing::debug!(url = %url, last_event_id = ?checkpoint, "connecting");
        // The connect timeout covers TCP; waiting for the response head is bounded by the
        // idle timeout, like every later read.
        let response = match tokio::time::timeout(self.config.idle_timeout(), request.send()).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(source)) => return Err(SseError::Connect { url, source }),
            Err(_) => {
                return Err(SseError::Idle {
                    url,
                    timeout: self.config.idle_timeout(),
                });
            }
        };
        let status = response.status().as_u16();
        if status == 204 {
            tracing::info!(url = %url, "server answered 204 No Content: this stream stops");
            self.stopped = true;
            // Readiness no longer waits for this stream.
            self.leave_health();
            return Ok(());
        }
        if !response.status().is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(SseError::Status {
                url,
                status,
                retry_after,
            });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("text/event-stream") {
            return Err(SseError::ContentType {
                url,
                status,
                content_type,
            });
        }
        tracing::info!(url = %url, last_event_id = ?checkpoint, "event stream connected");
        self.parser.reset(checkpoint);
        self.conn = Some(Connection {
            body: response.bytes_stream().boxed(),
            idle_at: after(self.config.idle_timeout()),
        });
        self.shared.metrics.connected.set(1.0);
        self.schedule.connected();
        self.health.up();
        Ok(())
    }

    /// Drop the connection (an unfinished event in the parser is discarded on the next
    /// connect's reset).
    fn disconnect(&mut self) {
        if self.conn.take().is_some() {
            self.schedule.disconnected();
            self.shared.metrics.connected.set(0.0);
            self.health.down();
        }
    }

    fn schedule_reconnect(&mut self, error: Option<&SseError>) {
        let delay = self.schedule.next_delay(error);
        match error {
            Some(error @ SseError::Checkpoint { .. }) => {
                tracing::error!(url = %self.url, %error, retry_in = ?delay, "the stored checkpoint cannot be read; not connecting without it");
            }
            Some(error) if error.is_client_error() => {
                tracing::error!(url = %self.url, %error, retry_in = ?delay, "the server refused the event stream");
            }
            Some(error) => {
                tracing::warn!(url = %self.url, %error, retry_in = ?delay, "event stream failed");
            }
            None => {}
        }
        self.shared
            .metrics
            .reconnect(error.map_or("eof", SseError::cause));
        self.reconnect_at = Some(Instant::now() + delay);
    }

    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.disconnect();
        self.shared.end();
        self.leave_health();
    }

    fn leave_health(&mut self) {
        if !self.left_health {
            self.left_health = true;
            self.health.stopped();
        }
    }
}

/// `d` from now; a `d` too large for a deadline (`Duration::MAX`: "never") is 30 years.
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 60 * 60))
}

/// The longest wait before a reconnect, whatever the server asks: one day.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// When to reconnect: core's backoff over consecutive failures, started over after a
/// healthy connection, and never sooner than the server asked (`retry:`, `Retry-After`) or,
/// after a client error, than the long client-error delay.
#[derive(Debug, Clone)]
struct Schedule {
    backoff: Backoff,
    client_error_delay: Duration,
    /// Failures in a row, started over after a connection stayed up for `healthy_after`.
    streak: FailureStreak,
    server_retry: Option<Duration>,
}

impl Schedule {
    fn new(config: &SseConfig) -> Self {
        Schedule {
            backoff: config.backoff(),
            client_error_delay: config.client_error_delay(),
            streak: FailureStreak::new(config.healthy_after()),
            server_retry: None,
        }
    }

    /// A connection is up.
    fn connected(&mut self) {
        self.streak.healthy();
    }

    /// The connection ended: if it stayed up long enough, the backoff starts over.
    fn disconnected(&mut self) {
        self.streak.unhealthy();
    }

    /// The wait before the next attempt, after a failure (`error`) or the end of the body.
    fn next_delay(&mut self, error: Option<&SseError>) -> Duration {
        let mut delay = self.backoff.delay(self.streak.failed());
        if let Some(retry) = self.server_retry {
            delay = delay.max(retry);
        }
        if let Some(SseError::Status {
            retry_after: Some(after),
            ..
        }) = error
        {
            delay = delay.max(*after);
        }
        if error.is_some_and(|e| e.is_client_error() || matches!(e, SseError::Checkpoint { .. })) {
            delay = delay.max(self.client_error_delay);
        }
        // A server may ask for anything (`retry: 18446744073709551615`): keep the deadline
        // representable.
        delay.min(MAX_RECONNECT_DELAY)
    }
}

impl Drop for PathStream {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        let backoff = Backoff::builder()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1))
            .jitter(asyncworker_core::Jitter::None)
            .build()
            .unwrap();
        let config = SseConfig::builder("http://h")
            .backoff(backoff)
            .client_error_delay(Duration::from_secs(60))
            .healthy_after(Duration::from_secs(30))
            .build()
            .unwrap();
        Schedule::new(&config)
    }

    fn status(status: u16, retry_after: Option<u64>) -> SseError {
        SseError::Status {
            url: "http://h/".into(),
            status,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    /// A connection that stays up for `up`, then ends.
    async fn up_for(s: &mut Schedule, up: Duration) {
        s.connected();
        tokio::time::advance(up).await;
        s.disconnected();
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_and_starts_over_after_a_healthy_connection() {
        let mut s = schedule();
        let ms = Duration::from_millis;
        assert_eq!(s.next_delay(None), ms(100));
        assert_eq!(s.next_delay(Some(&status(500, None))), ms(200));
        up_for(&mut s, Duration::from_secs(29)).await;
        assert_eq!(s.next_delay(None), ms(400));
        up_for(&mut s, Duration::from_secs(30)).await;
        assert_eq!(s.next_delay(None), ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_server_and_client_errors_lengthen_the_wait() {
        let mut s = schedule();
        assert_eq!(
            s.next_delay(Some(&status(429, Some(5)))),
            Duration::from_secs(5)
        );
        assert_eq!(
            s.next_delay(Some(&status(401, None))),
            Duration::from_secs(60)
        );
        s.server_retry = Some(Duration::from_secs(3));
        up_for(&mut s, Duration::from_secs(60)).await;
        assert_eq!(s.next_delay(None), Duration::from_secs(3));
        s.server_retry = Some(Duration::from_millis(u64::MAX));
        assert_eq!(s.next_delay(None), MAX_RECONNECT_DELAY);
    }
}
