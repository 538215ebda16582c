//! PostgreSQL and Redis for the tests that need them: on their standard local ports (or at
//! `HEADROOM_TEST_POSTGRES` / `HEADROOM_TEST_REDIS`), each test in a schema or key prefix of
//! its own, so that tests run in parallel and again. Those tests are `#[ignore = "needs …"]`:
//! `cargo test` lists them as ignored, saying what each needs, and `-- --include-ignored`
//! runs them; a service that cannot be reached is then a failure that names it.
#![allow(dead_code)] // each test binary uses its own part

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::Connection;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Panics, naming the service and where it was looked for, unless `host:port` accepts
/// connections.
fn reachable(what: &str, url: &str) {
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
    assert!(
        up,
        "{what} is not reachable at {host}:{port}: this test needs it (see the README's \
         test command), or run `cargo test` without `--include-ignored` to leave it out"
    );
}

/// The PostgreSQL server's URL (it answers).
pub fn postgres() -> String {
    let url = std::env::var("HEADROOM_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    reachable("PostgreSQL", &url);
    url
}

/// The Redis server's URL (it answers).
pub fn redis() -> String {
    let url =
        std::env::var("HEADROOM_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    reachable("Redis", &url);
    url
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
