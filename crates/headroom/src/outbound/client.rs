//! The HTTP client that calls upstreams: pooled, HTTP/1.1 and HTTP/2, TLS with rustls and
//! the webpki roots, no redirects followed and no proxy taken from the environment.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

pub type UpstreamClient = Client<NoConnInfo, Body>;

/// A client for calls whose requests carry their own `Host` header when `sets_host` is false
/// (calls to upstreams: the value is made once per upstream, where hyper-util would format
/// it from the URI for every call), or one that adds it from the URI (token endpoints).
pub fn build(sets_host: bool) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .expect("ring supports the default TLS versions")
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .set_host(sets_host)
        .build(NoConnInfo(https))
}

type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// The HTTPS connector, without the connection's addresses (`HttpInfo`) that hyper-util would
/// otherwise copy into every answer's extensions (an allocation per call nobody reads).
#[derive(Clone)]
pub struct NoConnInfo(HttpsConnector<HttpConnector>);

impl tower::Service<http::Uri> for NoConnInfo {
    type Response = Conn;
    type Error = <HttpsConnector<HttpConnector> as tower::Service<http::Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map(Conn) })
    }
}

/// An upstream connection (see [`NoConnInfo`]).
pub struct Conn(Stream);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let inner = self.0.connected();
        let connected = Connected::new().proxy(inner.is_proxied());
        if inner.is_negotiated_h2() {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
