//! The base URL's helpers: joining a path by the [module's rules](super), credentials out of
//! URLs.

use asyncworker_core::Error;
use url::Url;

pub(super) fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `url` with any password replaced, for error messages.
pub(super) fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Unparseable: it may still hold a password after `:` and before `@`.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &url[..scheme], &url[at + 1..])
            }
            _ => url.to_owned(),
        },
    }
}

pub(super) fn join(base: &Url, path: &str) -> Result<Url, Error> {
    if path.contains("://") {
        return Err(Error::config(format!(
            "sse path {path:?} must be a path, not a URL (set the base URL instead)"
        )));
    }
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    let rest = path.trim_start_matches('/');
    if !rest.is_empty() {
        url.set_path(&format!("{prefix}/{rest}"));
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        let joined = match base.query().filter(|q| !q.is_empty()) {
            Some(own) => format!("{own}&{query}"),
            None => query.to_owned(),
        };
        url.set_query(Some(&joined));
    }
    Ok(url)
}
