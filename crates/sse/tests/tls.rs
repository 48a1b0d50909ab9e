//! An `https` event stream (feature `rustls`): the server's certificate is signed by the
//! test CA that `scripts/test.sh` provides (`ASYNCWORKER_TEST_TLS_DIR`, the one the AMQP TLS
//! tests use), trusted with `root_certificates_pem`; without it the handshake fails.

use std::path::PathBuf;
use std::sync::Arc;

use asyncworker_core::{Message, Shutdown, Source, SourceContext};
use asyncworker_sse::{SseConfig, SseError, SseSource};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn tls_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ASYNCWORKER_TEST_TLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/asyncworker-rabbitmq/tls"));
    dir.join("ca.pem").exists().then_some(dir)
}

/// A one-response HTTPS server: an event stream whose body ends when the connection closes.
async fn serve_tls(dir: &std::path::Path) -> String {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = tls.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let response = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\nid: 1\ndata: over tls\n\n";
                tls.write_all(response.as_bytes()).await.unwrap();
                tls.flush().await.unwrap();
                // Hold the connection open: the stream stays connected.
                futures::future::pending::<()>().await;
            });
        }
    });
    format!("https://localhost:{port}")
}

#[tokio::test]
async fn an_https_stream_with_a_private_ca() {
    let Some(dir) = tls_dir() else {
        eprintln!("skipped: no test CA (run through scripts/test.sh)");
        return;
    };
    let base = serve_tls(&dir).await;

    let untrusted = SseConfig::builder(base.clone()).build().unwrap();
    let source = SseSource::new(&untrusted, ["/events"]).unwrap();
    let mut stream = source.into_stream(SourceContext::new("r", Shutdown::new()));
    let error = stream.next().await.unwrap().unwrap_err();
    assert!(matches!(error, SseError::Connect { .. }), "{error:?}");

    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let trusted = SseConfig::builder(base)
        .root_certificates_pem(ca)
        .build()
        .unwrap();
    let source = SseSource::new(&trusted, ["/events"]).unwrap();
    let mut stream = source.into_stream(SourceContext::new("r", Shutdown::new()));
    let event = stream.next().await.unwrap().unwrap();
    assert_eq!((event.id(), event.data()), (Some("1"), "over tls"));
    assert_eq!(event.payload().len(), 8);
}

#[test]
fn a_root_certificate_that_is_not_pem_is_a_config_error() {
    let built = SseConfig::builder("https://localhost/")
        .root_certificates_pem(b"not a certificate".to_vec())
        .build();
    assert!(
        matches!(built, Err(asyncworker_core::Error::Config(_))),
        "{built:?}"
    );
}
