//! A bare hyper reverse proxy, the anchor of `bench/proxy-overhead/run.sh`: the HTTP stack
//! Headroom's proxy is built on (Tokio's multi-threaded runtime with one worker per core,
//! hyper-util's auto server with TCP_NODELAY, hyper-util's pooled legacy client with
//! TCP_NODELAY and up to 256 idle connections per host, mimalloc) and nothing else: no router,
//! no auth, no governor, no metrics, no event log, no timeouts, no connection cap.
//!
//!   bare-hyper-proxy LISTEN_ADDR UPSTREAM_BASE     e.g. 127.0.0.1:8081 http://127.0.0.1:8080
//!
//! Every request goes to UPSTREAM_BASE with the same path and query, method, headers (less
//! `Host` and the hop-by-hop ones) and streamed body; the answer comes back as it is.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderName, CONNECTION, HOST, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Upstream = Client<HttpConnector, Incoming>;
type Answer = Response<Either<Incoming, Empty<Bytes>>>;

const HOP_BY_HOP: [HeaderName; 6] = [CONNECTION, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE];

async fn forward(
    client: Upstream,
    base: &'static str,
    mut req: Request<Incoming>,
) -> Result<Answer, Infallible> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = match format!("{base}{path}").parse() {
        Ok(uri) => uri,
        Err(_) => return Ok(bad_gateway()),
    };
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    headers.remove(HOST);
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    Ok(match client.request(req).await {
        Ok(answer) => answer.map(Either::Left),
        Err(_) => bad_gateway(),
    })
}

fn bad_gateway() -> Answer {
    let mut answer = Response::new(Either::Right(Empty::new()));
    *answer.status_mut() = StatusCode::BAD_GATEWAY;
    answer
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(base)) = (args.next(), args.next()) else {
        eprintln!("usage: bare-hyper-proxy LISTEN_ADDR UPSTREAM_BASE");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN_ADDR: ip:port");
    let base: &'static str = Box::leak(base.trim_end_matches('/').to_owned().into_boxed_str());

    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(http);

    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), base, req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
