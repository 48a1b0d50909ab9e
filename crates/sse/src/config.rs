//! [`SseConfig`]: where the event streams are and how to reach them.
//!
//! # Joining a base URL and a path
//!
//! A route's paths are joined to the base URL by these rules (not RFC 3986 reference
//! resolution, which would drop a base's path prefix):
//!
//! - the base's path is a prefix: `http://h/api` and `http://h/api/` with `/v2/events` or
//!   `v2/events` all give `http://h/api/v2/events`;
//! - a path of `""` or `/` is the base itself;
//! - a query string in the path is kept, after the base's own: base `http://h/?token=t`
//!   with `/events?since=1` gives `http://h/events?token=t&since=1`;
//! - a path that is a whole URL (`http://...`), or a base with a fragment, is an error;
//! - user and password in the base URL are moved to basic auth, never kept in the URL (so
//!   no URL in a log carries them).
//!
//! ```
//! use std::time::Duration;
//! use asyncworker_sse::SseConfig;
//!
//! # fn main() -> Result<(), asyncworker_core::BoxError> {
//! let config = SseConfig::builder("http://worker:secret@127.0.0.1:8080/api?token=t")
//!     .idle_timeout(Duration::from_secs(30))
//!     .header("X-Client", "worker-1")
//!     .build()?;
//! assert_eq!(config.user(), Some("worker")); // moved to basic auth
//! assert_eq!(
//!     config.url("/v2/events?since=1")?.as_str(),
//!     "http://127.0.0.1:8080/api/v2/events?token=t&since=1"
//! );
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use asyncworker_core::{Backoff, Error, Jitter};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::parse::DEFAULT_MAX_EVENT_SIZE;
use urls::{decode, join, redact};

mod urls;

/// Default connect timeout: 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default idle timeout (no bytes at all, not even a comment): 60 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default wait after a 4xx (other than 429) or a response that is not an event stream: 60 s.
pub const DEFAULT_CLIENT_ERROR_DELAY: Duration = Duration::from_secs(60);
/// Default time a connection must stay up for its reconnect backoff to start over: 30 s.
pub const DEFAULT_HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// The default reconnect backoff: 500 ms, doubling, capped at 30 s, each delay drawn from
/// `[d / 2, d]`.
pub fn default_backoff() -> Backoff {
    Backoff::builder()
        .initial_delay(Duration::from_millis(500))
        .multiplier(2.0)
        .max_delay(Duration::from_secs(30))
        .jitter(Jitter::Proportional(0.5))
        .build()
        .unwrap_or_default()
}

/// A password: kept out of `Debug` and `Display`.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The base URL as given, unchecked: it may hold a password, so `Debug` redacts it.
#[derive(Clone)]
struct RawUrl(String);

impl fmt::Debug for RawUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact(&self.0), f)
    }
}

/// How to reach the event streams of one server: base URL, credentials, headers, timeouts,
/// limits and the reconnect schedule. Built with [`SseConfig::builder`]; cheap to clone
/// (the HTTP client inside is shared).
#[derive(Clone)]
pub struct SseConfig {
    base: Url,
    user: Option<String>,
    password: Option<Secret>,
    headers: HeaderMap,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_event_size: usize,
    backoff: Backoff,
    client_error_delay: Duration,
    healthy_after: Duration,
    client: reqwest::Client,
}

impl fmt::Debug for SseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may be tokens: names only.
        let headers: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("SseConfig")
            .field("base", &self.base.as_str())
            .field("user", &self.user)
            .field("password", &self.password)
            .field("headers", &headers)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_event_size", &self.max_event_size)
            .field("backoff", &self.backoff)
            .field("client_error_delay", &self.client_error_delay)
            .field("healthy_after", &self.healthy_after)
            .finish()
    }
}

impl SseConfig {
    /// A builder for the server at `base_url` (checked by [`SseConfigBuilder::build`]).
    pub fn builder(base_url: impl Into<String>) -> SseConfigBuilder {
        SseConfigBuilder {
            base: RawUrl(base_url.into()),
            user: None,
            password: None,
            headers: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            backoff: default_backoff(),
            client_error_delay: DEFAULT_CLIENT_ERROR_DELAY,
            healthy_after: DEFAULT_HEALTHY_AFTER,
            #[cfg(feature = "rustls")]
            root_certificates: Vec::new(),
        }
    }

    /// The base URL (without credentials).
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The basic-auth user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The maximum event size.
    pub fn max_event_size(&self) -> usize {
        self.max_event_size
    }

    /// The reconnect backoff.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// The wait after a client error.
    pub fn client_error_delay(&self) -> Duration {
        self.client_error_delay
    }

    /// How long a connection must stay up for the backoff to start over.
    pub fn healthy_after(&self) -> Duration {
        self.healthy_after
    }

    /// The URL of `path`, joined to the base URL by the [module's rules](self).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `path` is a whole URL.
    pub fn url(&self, path: &str) -> Result<Url, Error> {
        join(&self.base, path)
    }

    /// A GET request for an event stream at `url`: `Accept: text/event-stream`,
    /// `Cache-Control: no-cache`, the extra headers, basic auth and `Last-Event-ID`.
    pub(crate) fn request(
        &self,
        url: &Url,
        last_event_id: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header(reqwest::header::CACHE_CONTROL, "no-cache")
            .headers(self.headers.clone());
        if let Some(user) = &self.user {
            request = request.basic_auth(user, self.password.as_ref().map(|p| &p.0));
        }
        if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
            request = request.header("last-event-id", id);
        }
        request
    }
}

/// Builds an [`SseConfig`]; every value is checked by [`build`](SseConfigBuilder::build).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct SseConfigBuilder {
    base: RawUrl,
    user: Option<String>,
    password: Option<Secret>,
    headers: Vec<(String, Secret)>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_event_size: usize,
    backoff: Backoff,
    client_error_delay: Duration,
    healthy_after: Duration,
    #[cfg(feature = "rustls")]
    root_certificates: Vec<Vec<u8>>,
}

impl SseConfigBuilder {
    /// Trust the CA certificates in `pem` (one or more PEM blocks) as well as the platform's,
    /// for a server whose certificate a private CA signed.
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates.push(pem.into());
        self
    }

    /// Send basic auth with every request. The password never appears in logs, `Debug` or
    /// `Display`.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(Secret(password.into()));
        self
    }

    /// Send this header with every request (added to `Accept`, `Cache-Control` and
    /// `Last-Event-ID`, which the source sets itself). Its value is treated as a secret.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), Secret(value.into())));
        self
    }

    /// How long connecting may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reconnect when no bytes at all (not even a comment) arrive for this long (default
    /// 60 s; servers commonly send a comment every 15–30 s to stay under it).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The largest event accepted, in bytes of data (default 1 MiB); see
    /// [`parse`](crate::parse#limits). A larger one is an error and a reconnect.
    pub fn max_event_size(mut self, bytes: usize) -> Self {
        self.max_event_size = bytes;
        self
    }

    /// The reconnect schedule after failures (default [`default_backoff`]). A server's
    /// `retry:` and `Retry-After` raise a delay, never shorten it.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long to wait after a 4xx other than 429 (401, 403, 404, ...) or a response that is
    /// not an event stream (default 60 s): the request is wrong, retrying fast won't help.
    pub fn client_error_delay(mut self, delay: Duration) -> Self {
        self.client_error_delay = delay;
        self
    }

    /// How long a connection must stay up for the backoff to start over (default 30 s).
    pub fn healthy_after(mut self, period: Duration) -> Self {
        self.healthy_after = period;
        self
    }

    /// Check the values and build the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a base URL that does not parse, is not `http`/`https` (`https`
    /// only with the `rustls` feature) or has a fragment; an invalid header name or value; a
    /// zero timeout or maximum event size; root certificates that are not PEM; or an HTTP
    /// client that cannot be built.
    pub fn build(self) -> Result<SseConfig, Error> {
        let mut base = Url::parse(&self.base.0)
            .map_err(|e| Error::config(format!("sse base URL {:?}: {e}", redact(&self.base.0))))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::config(format!(
                "sse base URL {:?} is not an http or https URL",
                redact(&self.base.0)
            )));
        }
        if base.scheme() == "https" && !cfg!(feature = "rustls") {
            return Err(Error::config(
                "an https sse base URL needs the `rustls` feature of asyncworker-sse",
            ));
        }
        if base.fragment().is_some() {
            return Err(Error::config("sse base URL must not have a fragment"));
        }
        let (mut user, mut password) = (self.user, self.password);
        if !base.username().is_empty() && user.is_none() {
            user = Some(decode(base.username()));
            password = base.password().map(|p| Secret(decode(p)));
        }
        // Infallible for an http(s) URL; the credentials now live in basic auth.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let mut headers = HeaderMap::new();
        for (name, value) in self.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::config(format!("invalid sse header name {name:?}")))?;
            let mut value = HeaderValue::from_str(&value.0)
                .map_err(|_| Error::config(format!("invalid value for sse header {name:?}")))?;
            value.set_sensitive(true);
            headers.append(header, value);
        }
        for (what, d) in [
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::config(format!("sse {what} must be more than 0")));
            }
        }
        if self.max_event_size == 0 {
            return Err(Error::config("sse max_event_size must be at least 1"));
        }
        #[cfg(feature = "rustls")]
        {
            // reqwest is built without a provider of its own: use ring, unless the process
            // installed one already (then this does nothing).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        #[allow(unused_mut)]
        let mut client = reqwest::Client::builder().connect_timeout(self.connect_timeout);
        #[cfg(feature = "rustls")]
        for pem in &self.root_certificates {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::config(format!("invalid sse root certificate PEM: {e}")))?;
            if certs.is_empty() {
                return Err(Error::config(
                    "sse root certificate PEM holds no certificate",
                ));
            }
            client = client.tls_certs_merge(certs);
        }
        let client = client
            .build()
            .map_err(|e| Error::config(format!("cannot build the sse HTTP client: {e}")))?;
        Ok(SseConfig {
            base,
            user,
            password,
            headers,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            max_event_size: self.max_event_size,
            backoff: self.backoff,
            client_error_delay: self.client_error_delay,
            healthy_after: self.healthy_after,
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(base: &str, path: &str) -> String {
        let config = SseConfig::builder(base).build().expect("valid");
        config.url(path).expect("joins").to_string()
    }

    #[test]
    fn join_rules() {
        assert_eq!(
            url("http://h:8080", "/v2/events"),
            "http://h:8080/v2/events"
        );
        assert_eq!(
            url("http://h:8080/", "v2/events"),
            "http://h:8080/v2/events"
        );
        assert_eq!(url("http://h/api", "/v2/events"), "http://h/api/v2/events");
        assert_eq!(url("http://h/api/", "/v2/events"), "http://h/api/v2/events");
        assert_eq!(url("http://h/api/", ""), "http://h/api/");
        assert_eq!(url("http://h/api", "/"), "http://h/api");
        assert_eq!(
            url("http://h/api?token=t", "/events?since=1"),
            "http://h/api/events?token=t&since=1"
        );
        assert_eq!(
            url("http://h/?token=t", "/events"),
            "http://h/events?token=t"
        );
        assert_eq!(url("http://h", "/e?a=1&b=2"), "http://h/e?a=1&b=2");
        let config = SseConfig::builder("http://h").build().unwrap();
        assert!(config.url("http://other/x").is_err());
    }

    #[test]
    fn https_needs_the_rustls_feature() {
        let built = SseConfig::builder("https://h/").build();
        assert_eq!(built.is_ok(), cfg!(feature = "rustls"), "{built:?}");
    }

    #[test]
    fn invalid_input_fails_at_build() {
        for base in ["not a url", "ftp://h/", "http://h/#frag", "mailto:a@b"] {
            let err = SseConfig::builder(base).build().unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{base}: {err}");
        }
        let bad = [
            SseConfig::builder("http://h").header("bad name", "v"),
            SseConfig::builder("http://h").header("x-ok", "line\nbreak"),
            SseConfig::builder("http://h").idle_timeout(Duration::ZERO),
            SseConfig::builder("http://h").connect_timeout(Duration::ZERO),
            SseConfig::builder("http://h").max_event_size(0),
        ];
        for builder in bad {
            assert!(matches!(builder.build(), Err(Error::Config(_))));
        }
    }

    #[test]
    fn password_never_printed() {
        let config = SseConfig::builder("http://h")
            .basic_auth("me", "s3cret-pw")
            .header("x-token", "tok-value")
            .build()
            .unwrap();
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("s3cret-pw") && !debug.contains("tok-value"),
            "{debug}"
        );
        assert!(debug.contains("\"me\""));
        let builder = SseConfig::builder("http://h").basic_auth("me", "s3cret-pw");
        assert!(!format!("{builder:?}").contains("s3cret-pw"));
        // Credentials in the URL move to basic auth.
        let config = SseConfig::builder("http://u:p%40ss-word@h/x")
            .build()
            .unwrap();
        assert_eq!(config.base_url().as_str(), "http://h/x");
        assert_eq!(config.user(), Some("u"));
        assert!(!format!("{config:?}").contains("ss-word"));
        let builder = SseConfig::builder("http://u:pw-in-url@h/x");
        assert!(!format!("{builder:?}").contains("pw-in-url"), "{builder:?}");
        let err = SseConfig::builder("http://u:pw-secret@h:99999/")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("pw-secret"), "{err}");
    }
}
