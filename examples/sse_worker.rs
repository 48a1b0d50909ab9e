//! Run with: cargo run --example sse_worker --features sse
//!
//! The Python original's Server-Sent Events example, in Rust: one handler receives the events
//! of `/v2/events` (Marathon's event stream) in batches of `BULK_SIZE` (2) — always a `Vec`,
//! even at size 1 — and prints them as the original does:
//!
//! ```text
//! Events received: 2 ['deployment_info', 'status_update_event']
//! Event Received: deployment_info plan-1
//! Event Received: status_update_event app=/asgard/web, task=web.2 (TASK_RUNNING)
//! ```
//!
//! With no `SSE_URL` it starts a small event source of its own on 127.0.0.1 (an embedded axum
//! server that honours `Last-Event-ID`), so the one command above runs it. To consume a real
//! server:
//!
//! | variable | default |
//! |---|---|
//! | `SSE_URL` | the embedded source |
//! | `SSE_USER`, `SSE_PASSWORD` | no basic auth |
//! | `SSE_PATHS` | `/v2/events` (comma-separated) |
//! | `BULK_SIZE` | `2` |
//! | `ASYNCWORKER_FLUSH_TIMEOUT` | `60` — seconds a partial batch waits |
//! | `ASYNCWORKER_LOGLEVEL` | `info` |
//!
//! Each event's id and name are logged when the handler starts on it. SIGTERM or Ctrl-C
//! shuts the worker down gracefully: intake stops, the partial batch is flushed and settled
//! (moving the checkpoint), and the process exits 0.

use std::time::Duration;

use asyncworker::prelude::*;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A JSON value as Python would print it: strings without quotes.
fn show(value: &serde_json::Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

async fn on_event(events: Vec<SseEvent>) -> Result<(), BoxError> {
    for event in &events {
        tracing::info!(
            id = event.id().unwrap_or("-"),
            name = event.name(),
            "handling event"
        );
    }
    let names: Vec<String> = events.iter().map(|e| format!("'{}'", e.name())).collect();
    println!("Events received: {} [{}]", events.len(), names.join(", "));
    for event in &events {
        let data = match event.name() {
            "deployment_info" => show(&event.body()?["plan"]["id"]),
            "deployment_success" => show(&event.body()?["id"]),
            "status_update_event" => {
                let body = event.body()?;
                format!(
                    "app={}, task={} ({})",
                    show(&body["appId"]),
                    show(&body["taskId"]),
                    show(&body["taskStatus"])
                )
            }
            _ => String::new(),
        };
        println!("Event Received: {} {data}", event.name());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Report> {
    // The settings are read from the environment once, here.
    let mut app = App::new();
    asyncworker::init_logging(app.settings()?);

    let base = match env("SSE_URL") {
        Some(url) => url,
        None => {
            let url = local::start().await?;
            tracing::info!(%url, "no SSE_URL: serving sample events from an embedded source");
            url
        }
    };
    let paths: Vec<String> = env("SSE_PATHS")
        .unwrap_or_else(|| "/v2/events".to_owned())
        .split(',')
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let bulk_size: usize = match env("BULK_SIZE") {
        Some(v) => v
            .parse()
            .map_err(|_| format!("BULK_SIZE={v:?} is not a number"))?,
        None => 2,
    };

    let mut config = SseConfig::builder(base);
    if let Some(user) = env("SSE_USER") {
        config = config.basic_auth(user, env("SSE_PASSWORD").unwrap_or_default());
    }
    let config = config.build()?;
    let source = SseSource::new(&config, &paths)?;
    tracing::info!(?source, bulk_size, "starting");

    app.route("events", source, on_event)
        .bulk_size(bulk_size)
        .on_success(Action::Ack)
        .on_error(Action::Requeue);
    app.on_shutdown(|| async {
        tracing::info!("worker stopped; every event handed out was settled");
        Ok::<(), BoxError>(())
    });
    app.run().await?;
    Ok(())
}

/// The embedded event source: Marathon-like events, one every 300 ms, with ids, a comment
/// now and then, and a replay from `Last-Event-ID`.
mod local {
    use super::*;

    use axum::body::Body;
    use axum::http::HeaderMap;
    use axum::response::Response;

    fn event(n: u64) -> String {
        let (name, data) = match n % 3 {
            1 => (
                "deployment_info",
                format!(r#"{{"plan": {{"id": "plan-{n}"}}, "currentStep": {{"actions": []}}}}"#),
            ),
            2 => (
                "status_update_event",
                format!(
                    r#"{{"appId": "/asgard/web", "taskId": "web.{n}", "taskStatus": "TASK_RUNNING"}}"#
                ),
            ),
            _ => ("deployment_success", format!(r#"{{"id": "deploy-{n}"}}"#)),
        };
        let comment = if n.is_multiple_of(5) {
            ": keep-alive\n\n"
        } else {
            ""
        };
        format!("{comment}id: {n}\nevent: {name}\ndata: {data}\n\n")
    }

    async fn events(headers: HeaderMap) -> Response {
        let after: u64 = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = futures::stream::unfold(after + 1, |n| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Some((Ok::<_, std::convert::Infallible>(event(n)), n + 1))
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(body))
            .unwrap_or_default()
    }

    /// Serve `/v2/events` on a free local port; returns the base URL.
    pub(super) async fn start() -> Result<String, BoxError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new().route("/v2/events", axum::routing::get(events));
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "embedded event source failed");
            }
        });
        Ok(url)
    }
}
