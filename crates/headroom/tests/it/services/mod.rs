//! PostgreSQL and Redis for the distributed tests: on their standard local ports (or at
//! `HEADROOM_TEST_POSTGRES` / `HEADROOM_TEST_REDIS`), each test in a schema or key prefix of
//! its own, so that tests run in parallel and again. Where a service cannot be reached the
//! test skips with a message saying so, unless `HEADROOM_REQUIRE_SERVICES=1` (CI), where it
//! fails.
#![allow(dead_code)] // each test binary uses its own part

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::Connection;

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn required() -> bool {
    std::env::var("HEADROOM_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Whether `host:port` accepts connections; if not, skips (prints why) or, when services
/// are required, fails.
fn reachable(what: &str, url: &str) -> bool {
    let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{what} URL {url}: {e}"));
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
    let port = parsed.port_or_known_default().unwrap_or(match what {
        "PostgreSQL" => 5432,
        _ => 6379,
    });
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    let up = addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok());
    if !up {
        if required() {
            panic!("{what} is not reachable at {host}:{port}, and HEADROOM_REQUIRE_SERVICES=1 requires it");
        }
        eprintln!(
            "SKIPPED: {what} is not reachable at {host}:{port}; this test needs it (set \
             HEADROOM_REQUIRE_SERVICES=1 to make that a failure)"
        );
    }
    up
}

/// The PostgreSQL server's URL, or `None` (the test skips) when it is not reachable.
pub fn postgres() -> Option<String> {
    let url = std::env::var("HEADROOM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    reachable("PostgreSQL", &url).then_some(url)
}

/// The Redis server's URL, or `None` (the test skips) when it is not reachable.
pub fn redis() -> Option<String> {
    let url =
        std::env::var("HEADROOM_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    reachable("Redis", &url).then_some(url)
}

/// A name no other test (nor an earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = headroom_core::clock::Clock::now(&headroom::clock::UnixClock).as_nanos();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    )
}

/// A schema of its own in the test database; `url()` makes it the connections' search path.
pub struct PgSchema {
    base: String,
    pub name: String,
}

impl PgSchema {
    pub async fn create(base: &str) -> PgSchema {
        let name = unique("hr");
        let mut conn = sqlx::PgConnection::connect(base)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {base}: {e}"));
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        PgSchema {
            base: base.to_string(),
            name,
        }
    }

    pub fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.base, self.name)
    }

    pub async fn drop(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.base).await {
            let _ = sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
                .execute(&mut conn)
                .await;
        }
    }
}
