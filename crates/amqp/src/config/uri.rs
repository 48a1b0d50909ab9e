//! Parsing an `amqp://` / `amqps://` URL into an [`AmqpConfigBuilder`].

use std::time::Duration;

use super::AmqpConfigBuilder;
use super::values::Secret;

impl AmqpConfigBuilder {
    /// Applies a list of URLs: the first as [`AmqpConfigBuilder::apply_url`] does, the
    /// others only adding their host and port, after checking they agree with the first on
    /// everything else.
    pub(super) fn apply_urls<I>(&mut self, urls: I) -> Result<(), String>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let before = self.clone();
        let mut first: Option<AmqpConfigBuilder> = None;
        let mut more = Vec::new();
        for (i, raw) in urls.into_iter().enumerate() {
            let raw = raw.as_ref().trim();
            let n = i + 1;
            if raw.is_empty() {
                return Err(format!(
                    "AMQP URL {n} of the list is empty: separate URLs with single commas,                      without one at the end"
                ));
            }
            if i > 0 && !raw.contains("://") {
                return Err(format!(
                    "AMQP URL {n} of the list is not an amqp:// or amqps:// URL (if a password \
                     holds a comma, write it as %2C)"
                ));
            }
            let mut parsed = before.clone();
            parsed.apply_url(raw).map_err(|e| {
                if i == 0 {
                    e
                } else {
                    format!("AMQP URL {n} of the list: {e}")
                }
            })?;
            match &first {
                None => first = Some(parsed),
                Some(first) => {
                    if let Some(what) = first.differs_from(&parsed) {
                        return Err(format!(
                            "AMQP URL {n} of the list differs from the first in its {what}:                              the URLs of one configuration may differ only in their host and                              port"
                        ));
                    }
                    more.push((parsed.common.host, parsed.port));
                }
            }
        }
        let Some(mut first) = first else {
            return Err("the list of AMQP URLs is empty".to_owned());
        };
        first.more = more;
        *self = first;
        Ok(())
    }

    /// What (other than the host and port) a URL applied to the same builder as `self` set
    /// differently, if anything.
    fn differs_from(&self, other: &AmqpConfigBuilder) -> Option<&'static str> {
        let (a, b) = (&self.common, &other.common);
        [
            (self.tls.map(|t| t.0) != other.tls.map(|t| t.0), "scheme"),
            (a.user != b.user, "user name"),
            (a.password != b.password, "password"),
            (a.vhost != b.vhost, "vhost"),
            (self.heartbeat != other.heartbeat, "heartbeat parameter"),
            (a.prefetch != b.prefetch, "prefetch parameter"),
            (
                a.connection_timeout != b.connection_timeout,
                "connection_timeout parameter",
            ),
            (
                a.connection_name != b.connection_name,
                "connection_name parameter",
            ),
            (a.frame_max != b.frame_max, "frame_max parameter"),
            (a.channel_max != b.channel_max, "channel_max parameter"),
        ]
        .into_iter()
        .find_map(|(differs, what)| differs.then_some(what))
    }

    pub(super) fn apply_url(&mut self, raw: &str) -> Result<(), String> {
        // Never echo `raw`: it may hold a password.
        let raw = raw.trim();
        check_misplaced_password(raw)?;
        let url = url::Url::parse(raw).map_err(|e| {
            format!("malformed AMQP URL ({e}); expected amqp://user:password@host:port/vhost")
        })?;
        match url.scheme() {
            "amqp" => self.tls = Some((false, "the amqp:// URL")),
            "amqps" => self.tls = Some((true, "the amqps:// URL")),
            other => {
                return Err(format!(
                    "unsupported URL scheme {other:?}: expected amqp:// or amqps://"
                ));
            }
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => percent_decode(d, "host")?,
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err("the AMQP URL has no host".to_owned()),
        };
        if host.is_empty() {
            return Err("the AMQP URL has no host".to_owned());
        }
        self.common.host = host;
        if let Some(port) = url.port() {
            self.port = Some(port);
        }
        if !url.username().is_empty() {
            self.common.user = percent_decode(url.username(), "user name")?;
        }
        if let Some(password) = url.password() {
            self.common.password = Secret(percent_decode(password, "password")?);
        }
        // RabbitMQ's URI spec: no path → the default vhost (ours: ASYNCWORKER_AMQP_DEFAULT_VHOST,
        // else "/"), so the builder's vhost stays; otherwise the one path segment,
        // percent-decoded (so "/%2f" is "/" and "/" alone is the empty vhost "").
        let path = url.path();
        if !path.is_empty() {
            let segment = &path[1..];
            if segment.contains('/') {
                return Err(
                    "the AMQP URL's vhost must be a single path segment (write \"/\" inside a \
                     vhost name as %2f)"
                        .to_owned(),
                );
            }
            self.common.vhost = percent_decode(segment, "vhost")?;
        }
        for (key, value) in url.query_pairs() {
            let int = |what: &str| -> Result<u64, String> {
                value.parse::<u64>().map_err(|_| {
                    format!("the AMQP URL's {what} must be a non-negative integer, got {value:?}")
                })
            };
            match &*key {
                "heartbeat" => self.heartbeat = Duration::from_secs(int("heartbeat")?),
                "connection_timeout" => {
                    self.common.connection_timeout =
                        Duration::from_millis(int("connection_timeout")?);
                }
                "prefetch" | "prefetch_count" => {
                    self.common.prefetch = u16::try_from(int("prefetch")?)
                        .map_err(|_| format!("prefetch must be at most {}", u16::MAX))?;
                }
                "connection_name" => self.common.connection_name = Some(value.into_owned()),
                "frame_max" => {
                    self.common.frame_max = Some(
                        u32::try_from(int("frame_max")?)
                            .map_err(|_| "frame_max is too large".to_owned())?,
                    );
                }
                "channel_max" => {
                    self.common.channel_max = Some(
                        u16::try_from(int("channel_max")?)
                            .map_err(|_| "channel_max is too large".to_owned())?,
                    );
                }
                other => {
                    return Err(format!(
                        "unknown AMQP URL parameter {other:?} (known: heartbeat, \
                         connection_timeout, prefetch, connection_name, frame_max, channel_max)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How to write a password (or vhost) holding reserved characters, for the errors of
/// [`check_misplaced_password`].
const PERCENT_ENCODE: &str = "percent-encode reserved characters in the password (and in the \
     vhost): `?` as %3F, `/` as %2F, `#` as %23, `@` as %40, `%` as %25";

/// Rejects what can only be a password holding a reserved character written as it is: an `@`
/// after the host part (in the path or the query: `amqp://svc:?Zt9q@rabbit` would read
/// `Zt9q@rabbit` as a query, `amqp://svc:123/Zt9q@rabbit` as port 123 and vhost
/// `Zt9q@rabbit`), or a `#` anywhere (AMQP URLs have no fragment). The error never repeats
/// any part of the URL.
fn check_misplaced_password(raw: &str) -> Result<(), String> {
    if raw.contains('#') {
        return Err(format!(
            "the AMQP URL contains a '#', which AMQP URLs do not use (it would cut the URL \
             short): if it is part of the password, {PERCENT_ENCODE}"
        ));
    }
    // The host part ends at the first `/` or `?` after the scheme's `://`, as the URL parser
    // reads it; user info ends at the last `@` before that.
    let after_scheme = raw.split_once("://").map_or(raw, |(_, rest)| rest);
    if let Some(end) = after_scheme.find(['/', '?'])
        && after_scheme[end..].contains('@')
    {
        return Err(format!(
            "the AMQP URL has an '@' after its host part (in the vhost or the query): the \
             password probably holds a reserved character written as it is, which cut the \
             URL short; {PERCENT_ENCODE}"
        ));
    }
    Ok(())
}

/// Percent-decodes one part of the URL (`what` names it in errors) with `percent-encoding`.
/// That crate passes a malformed escape (`%zz`, a `%` at the end) through as text; here it is
/// an error, so a typo in a password or vhost never connects with the wrong value.
fn percent_decode(s: &str, what: &str) -> Result<String, String> {
    let malformed = s.split('%').skip(1).any(|after| {
        !after
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err(format!(
            "the AMQP URL's {what} has an invalid percent-escape"
        ));
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| format!("the AMQP URL's {what} is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AmqpConfig;

    #[test]
    fn percent_escapes_decode_and_malformed_ones_are_errors() {
        assert_eq!(percent_decode("a%2Fb%2f%40", "vhost").unwrap(), "a/b/@");
        assert_eq!(percent_decode("caf%C3%A9", "vhost").unwrap(), "café");
        assert_eq!(percent_decode("plain", "vhost").unwrap(), "plain");
        for bad in ["%zz", "%2", "x%", "%%41"] {
            let e = percent_decode(bad, "vhost").unwrap_err();
            assert!(
                e.contains("vhost") && e.contains("percent-escape"),
                "{bad}: {e}"
            );
        }
        let e = percent_decode("%FF", "password").unwrap_err();
        assert!(e.contains("password") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn url_parts_are_parsed() {
        let c = AmqpConfig::from_url(
            "amqps://us%40er:p%3Ass@broker.example:1234/my%2fvhost?heartbeat=5&prefetch=10&connection_name=w1&connection_timeout=2500",
        )
        .unwrap();
        assert!(c.tls());
        assert_eq!(c.user(), "us@er");
        assert_eq!(c.inner.common.password.0, "p:ss");
        assert_eq!(c.host(), "broker.example");
        assert_eq!(c.port(), 1234);
        assert_eq!(c.vhost(), "my/vhost");
        assert_eq!(c.heartbeat(), Duration::from_secs(5));
        assert_eq!(c.prefetch(), 10);
        assert_eq!(c.connection_name(), Some("w1"));
        assert_eq!(c.connection_timeout(), Duration::from_millis(2500));
    }

    fn url_error(url: &str) -> String {
        match AmqpConfig::from_url(url) {
            Err(asyncworker_core::Error::Config(m)) => m,
            other => panic!("{url}: expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn a_password_with_reserved_characters_written_as_is_is_a_clear_error() {
        // The password is `?Zt9q`, `123/Zt9q`, `ab#cd`, `p?w`, `a/b`: each read some other way
        // (a query, a port and a vhost, a fragment, a bad port) unless percent-encoded.
        for (url, secret) in [
            ("amqp://svc:?Zt9q@rabbit", "Zt9q"),
            ("amqp://svc:123/Zt9q@rabbit", "Zt9q"),
            ("amqp://svc:123/Zt9q@rabbit:5672/%2f", "Zt9q"),
            ("amqp://svc:ab#cd@rabbit/%2f", "cd@rabbit"),
            ("amqp://svc:12#cd@rabbit", "cd@rabbit"),
            ("amqps://svc:p?w@rabbit:5671/jobs?heartbeat=5", "p?w"),
            ("amqp://svc:a/b@rabbit", "a/b"),
        ] {
            let e = url_error(url);
            assert!(
                e.contains("percent-encode") && e.contains("password") && e.contains("%3F"),
                "{url}: {e}"
            );
            assert!(!e.contains(secret) && !e.contains("rabbit"), "{url}: {e}");
        }
        assert!(url_error("amqp://svc:ab#cd@rabbit").contains("%23"));
    }

    #[test]
    fn percent_encoded_reserved_characters_in_a_password_still_parse() {
        for (url, password, vhost) in [
            ("amqp://svc:%3FZt9q@rabbit", "?Zt9q", "/"),
            ("amqp://svc:123%2FZt9q@rabbit/%2f", "123/Zt9q", "/"),
            ("amqp://svc:ab%23cd@rabbit/jobs", "ab#cd", "jobs"),
            ("amqp://svc:p%40ss@rabbit/a%40b", "p@ss", "a@b"),
            // An `@` or `:` inside the user info is unambiguous and kept as it is.
            ("amqp://svc:p@ss@rabbit", "p@ss", "/"),
            ("amqp://svc:pa:ss@rabbit:5673", "pa:ss", "/"),
        ] {
            let c = AmqpConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                (
                    c.user(),
                    c.inner.common.password.0.as_str(),
                    c.host(),
                    c.vhost()
                ),
                ("svc", password, "rabbit", vhost),
                "{url}"
            );
        }
    }

    #[test]
    fn ip_hosts_are_kept() {
        // amq-protocol-uri maps IP hosts to "localhost"; this parser must not.
        let c = AmqpConfig::from_url("amqp://10.1.2.3").unwrap();
        assert_eq!(c.host(), "10.1.2.3");
        assert_eq!(c.port(), 5672);
        assert_eq!(c.vhost(), "/");
        let c = AmqpConfig::from_url("amqp://[::1]:5673/%2f").unwrap();
        assert_eq!(c.host(), "::1");
        assert_eq!(c.port(), 5673);
        assert_eq!(c.vhost(), "/");
    }

    #[test]
    fn a_comma_separated_list_gives_every_endpoint_in_order() {
        let c = AmqpConfig::builder()
            .url(" amqp://u:p@h1:5701/v?heartbeat=5 , amqp://u:p@h2:5702/v?heartbeat=5,amqp://u:p@h3/v?heartbeat=5")
            .build()
            .unwrap();
        assert_eq!(c.endpoints(), [("h1", 5701), ("h2", 5702), ("h3", 5672)]);
        assert_eq!((c.host(), c.port(), c.vhost()), ("h1", 5701, "v"));
        assert_eq!(c.heartbeat(), Duration::from_secs(5));
        assert_eq!(
            c.endpoint_at(1, "v").to_string(),
            "amqp://u@h2:5702 vhost \"v\""
        );
        assert_eq!(
            c.to_string(),
            "amqp://u@h1:5701,h2:5702,h3:5672 vhost \"v\""
        );
        let same = AmqpConfig::from_urls([
            "amqp://u:p@h1:5701/v?heartbeat=5",
            "amqp://u:p@h2:5702/v?heartbeat=5",
            "amqp://u:p@h3/v?heartbeat=5",
        ])
        .unwrap();
        assert_eq!(c, same);
        // TLS keeps its default port for every endpoint; endpoint() adds after the list.
        let c = AmqpConfig::builder()
            .url("amqps://h1,amqps://h2:5000")
            .endpoint("h3", 5001)
            .build()
            .unwrap();
        assert_eq!(c.endpoints(), [("h1", 5671), ("h2", 5000), ("h3", 5001)]);
        // One URL: one endpoint, as before.
        assert_eq!(
            AmqpConfig::from_url("amqp://h").unwrap().endpoints(),
            [("h", 5672)]
        );
    }

    #[test]
    fn urls_that_disagree_are_an_error_naming_what_differs_never_the_password() {
        for (list, what) in [
            ("amqp://u:p@h1/v,amqps://u:p@h2/v", "scheme"),
            ("amqp://u:p@h1/v,amqp://w:p@h2/v", "user name"),
            ("amqp://u:s3cret-a@h1/v,amqp://u:s3cret-b@h2/v", "password"),
            ("amqp://u:p@h1/v,amqp://u:p@h2/w", "vhost"),
            ("amqp://u:p@h1/v,amqp://u:p@h2", "vhost"),
            ("amqp://u:p@h1/v?heartbeat=5,amqp://u:p@h2/v", "heartbeat"),
            ("amqp://u:p@h1/v,amqp://u:p@h2/v?prefetch=3", "prefetch"),
            (
                "amqp://h1?connection_name=a,amqp://h2?connection_name=b",
                "connection_name",
            ),
            ("amqp://h1?frame_max=8192,amqp://h2", "frame_max"),
        ] {
            let e = url_error(list);
            assert!(e.contains("URL 2") && e.contains(what), "{list}: {e}");
            assert!(!e.contains("s3cret"), "{list}: {e}");
        }
    }

    #[test]
    fn empty_entries_and_bad_entries_in_a_list_are_errors() {
        for list in ["amqp://a,,amqp://b", "amqp://a,", ",amqp://a", "", " , "] {
            let e = url_error(list);
            assert!(e.contains("empty"), "{list:?}: {e}");
        }
        assert!(url_error("amqp://a,amqp://b?bogus=1").contains("URL 2"));
        // A raw comma in a password splits the URL: the error says how to write it.
        let e = url_error("amqp://u:pa,ss-secret@h/v");
        assert!(!e.contains("ss-secret"), "{e}");
        let e = url_error("amqp://u:p@h/v,ss-secret@h/v");
        assert!(e.contains("%2C") && !e.contains("ss-secret"), "{e}");
        assert!(
            AmqpConfig::builder()
                .url("amqp://h")
                .endpoint("", 1)
                .build()
                .is_err()
        );
        assert!(
            AmqpConfig::builder()
                .url("amqp://h")
                .endpoint("h2", 0)
                .build()
                .is_err()
        );
    }
}
