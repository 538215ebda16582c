//! Who is calling. `/v1` wants `Authorization: Bearer <token>` and `/proxy` wants
//! `Proxy-Authorization: Bearer <token>` (so that `Authorization` stays free for the
//! upstream); a token may be the admin token or one scoped to a tenant.
//!
//! The admin token is `HEADROOM_API_TOKEN`, else one generated on first start and kept in
//! `admin.token` next to the database (mode 0600, printed once). Only `auth = "none"` in the
//! config turns tokens off, and then [`open_guard`] still refuses what a web page could send:
//! a listener reachable from any browser tab must not be a way to spend tenants' credentials.

use std::path::{Path, PathBuf};

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No API token is configured: everyone may call (the listener is loopback by default).
    Open,
    Admin,
    /// A token scoped to this tenant: it acts as that tenant only.
    Tenant(String),
}

impl Principal {
    /// The tenant a request acts as: the scoped token's tenant, else what it asks for.
    pub fn tenant_for(&self, asked: Option<&str>) -> ApiResult<Option<String>> {
        match (self, asked) {
            (Principal::Tenant(t), Some(a)) if a != t => Err(ApiError::Forbidden {
                detail: format!(
                    "this API token is scoped to tenant \"{t}\"; Headroom-Tenant \"{a}\" is not allowed"
                ),
            }),
            (Principal::Tenant(t), _) => Ok(Some(t.clone())),
            (_, asked) => Ok(asked.map(str::to_string)),
        }
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        match self {
            Principal::Open | Principal::Admin => Ok(()),
            Principal::Tenant(t) => Err(ApiError::Forbidden {
                detail: format!(
                    "this API token is scoped to tenant \"{t}\"; an admin token is needed"
                ),
            }),
        }
    }
}

/// The admin token file's name, in the database's directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The admin token file that goes with a database file.
pub fn admin_token_file_for(db: &Path) -> PathBuf {
    match db.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(ADMIN_TOKEN_FILE),
        _ => PathBuf::from(ADMIN_TOKEN_FILE),
    }
}

/// The admin token when none is given in `HEADROOM_API_TOKEN`: read from the file next to
/// the SQLite database, or made (and printed once) on first start. A shared PostgreSQL store
/// has no such file: every node must be given the same token.
pub fn stored_admin_token(store: &crate::store::AnyStore) -> anyhow::Result<String> {
    if store.is_shared() {
        anyhow::bail!(
            "a PostgreSQL store is shared by several nodes: set HEADROOM_API_TOKEN to the same \
             admin token on every node, or write auth = \"none\" in the config to run without \
             tokens (loopback only)"
        );
    }
    let Some(db) = store.path() else {
        // An in-memory store: the token lives as long as the process, like the data.
        let token = generate_admin_token();
        eprintln!(
            "headroom: admin API token for this process (in-memory store): {token}\n\
             send it as `Authorization: Bearer …` to /v1 and `Proxy-Authorization: Bearer …` to /proxy"
        );
        return Ok(token);
    };
    let path = admin_token_file_for(db);
    if path.exists() {
        return read_admin_token(&path);
    }
    let token = generate_admin_token();
    write_admin_token(&path, &token)?;
    eprintln!(
        "headroom: generated an admin API token (shown once; kept in {path}, mode 0600):\n\n    \
         {token}\n\nsend it as `Authorization: Bearer …` to /v1 and `Proxy-Authorization: \
         Bearer …` to /proxy; the CLI reads it from HEADROOM_API_TOKEN or that file",
        path = path.display()
    );
    tracing::info!(path = %path.display(), "generated an admin API token");
    Ok(token)
}

fn generate_admin_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}admin_{hex}", crate::credentials::TOKEN_PREFIX)
}

/// Reads an admin token file, refusing one that others may read.
pub fn read_admin_token(path: &Path) -> anyhow::Result<String> {
    let token = crate::credentials::read_private(path, "admin token file")?
        .trim()
        .to_string();
    if token.is_empty() || http::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
        anyhow::bail!(
            "the admin token file {} is empty or not one line of visible ASCII; delete it to \
             have a new token generated",
            path.display()
        );
    }
    Ok(token)
}

fn write_admin_token(path: &Path, token: &str) -> anyhow::Result<()> {
    crate::credentials::write_private(path, &format!("{token}\n"), "admin token file")
}
