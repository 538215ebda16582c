//! `headroom tenants …` and `headroom tokens …`: the credential and token admin API from the
//! command line, against a running `headroom serve`.
//!
//! Credentials are read from standard input, never from arguments, so they stay out of shell
//! history and `ps`. With `HEADROOM_API_TOKEN` set, requests carry it as a bearer token.

use std::io::{BufRead, IsTerminal, Read};

use anyhow::Context;
use headroom::credentials::check_credential_value;
use http::Method;
use serde_json::json;

use super::api::{print_json, seg, Api, ServerArgs};

#[derive(Debug, clap::Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    pub command: TenantsCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum TenantsCommand {
    /// Store TENANT's credential for UPSTREAM, read from standard input
    ///
    /// The proxy then puts it on every call TENANT makes to UPSTREAM, in the upstream's
    /// credential header (Authorization: Bearer … unless the config says otherwise). One
    /// trailing newline is removed.
    ///
    /// Examples:
    ///
    ///   headroom tenants set acme crm < acme-crm.token
    ///   printf '%s' "$CRM_TOKEN" | headroom tenants set acme crm
    #[command(verbatim_doc_comment)]
    Set {
        /// The tenant, as sent in `Headroom-Tenant`.
        tenant: String,
        /// The upstream's name in the config.
        upstream: String,
    },
    /// Delete TENANT's credential for UPSTREAM.
    Unset { tenant: String, upstream: String },
    /// Show which upstreams TENANT has a credential for (never the credentials), as JSON.
    List { tenant: String },
    /// Connect TENANT's OAuth grant for UPSTREAM: the token endpoint's JSON answer, read
    /// from standard input
    ///
    /// For an upstream with [upstreams.oauth]: give the answer your app got from the
    /// provider at the end of the authorization code flow ({"access_token", "refresh_token",
    /// "expires_in", "scope"}). Headroom refreshes the access token before it expires, one
    /// refresh at a time across every node, and injects it into TENANT's calls.
    ///
    /// Examples:
    ///
    ///   headroom tenants connect acme crm < acme-crm-grant.json
    ///   curl -s -d grant_type=authorization_code … https://provider/oauth/token \
    ///     | headroom tenants connect acme crm
    #[command(verbatim_doc_comment)]
    Connect { tenant: String, upstream: String },
    /// Remove TENANT's OAuth grant for UPSTREAM.
    Disconnect { tenant: String, upstream: String },
    /// Show TENANT's OAuth grants (expiry, scopes, broken or not; never a token), as JSON.
    Grants { tenant: String },
}

#[derive(Debug, clap::Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    pub command: TokensCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// Create an API token scoped to a tenant and print it, as JSON. It is shown only once.
    ///
    /// A scoped token acts as its tenant only: on /proxy (as `Proxy-Authorization: Bearer
    /// <token>`) it needs no Headroom-Tenant header and cannot name another tenant.
    ///
    /// Example:
    ///
    ///   headroom tokens create --tenant acme
    #[command(verbatim_doc_comment)]
    Create {
        /// The tenant the token acts as.
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a token by its id (the "id" that `tokens create` printed).
    Revoke { id: String },
    /// List tokens (ids, tenants, creation times; never the tokens), as JSON.
    List {
        /// Only this tenant's tokens.
        #[arg(long)]
        tenant: Option<String>,
    },
}

pub fn run_tenants(args: TenantsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    match args.command {
        TenantsCommand::Set { tenant, upstream } => {
            let credential = read_credential(&tenant, &upstream)?;
            api.call(
                Method::PUT,
                &format!(
                    "/v1/tenants/{}/credentials/{}",
                    seg(&tenant),
                    seg(&upstream)
                ),
                Some(json!({ "credential": credential })),
            )?;
            println!("stored the credential of tenant {tenant} for upstream {upstream}");
        }
        TenantsCommand::Unset { tenant, upstream } => {
            api.call(
                Method::DELETE,
                &format!(
                    "/v1/tenants/{}/credentials/{}",
                    seg(&tenant),
                    seg(&upstream)
                ),
                None,
            )?;
            println!("deleted the credential of tenant {tenant} for upstream {upstream}");
        }
        TenantsCommand::List { tenant } => {
            let body = api.call(
                Method::GET,
                &format!("/v1/tenants/{}/credentials", seg(&tenant)),
                None,
            )?;
            print_json(&body);
        }
        TenantsCommand::Connect { tenant, upstream } => {
            let grant = read_grant(&tenant, &upstream)?;
            api.call(
                Method::PUT,
                &format!("/v1/tenants/{}/oauth/{}", seg(&tenant), seg(&upstream)),
                Some(grant),
            )?;
            println!("connected the OAuth grant of tenant {tenant} for upstream {upstream}");
        }
        TenantsCommand::Disconnect { tenant, upstream } => {
            api.call(
                Method::DELETE,
                &format!("/v1/tenants/{}/oauth/{}", seg(&tenant), seg(&upstream)),
                None,
            )?;
            println!("removed the OAuth grant of tenant {tenant} for upstream {upstream}");
        }
        TenantsCommand::Grants { tenant } => {
            let body = api.call(
                Method::GET,
                &format!("/v1/tenants/{}/oauth", seg(&tenant)),
                None,
            )?;
            print_json(&body);
        }
    }
    Ok(())
}

/// A token endpoint's JSON answer from standard input, with only the fields the API takes
/// (`token_type` and the like are dropped; unknown ones too, so a provider's extras do not
/// make the call fail).
fn read_grant(tenant: &str, upstream: &str) -> anyhow::Result<serde_json::Value> {
    let mut text = String::new();
    std::io::stdin()
        .lock()
        .read_to_string(&mut text)
        .context("cannot read the grant from standard input (it must be text)")?;
    let value: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| {
        anyhow::anyhow!(
            "standard input is not the token endpoint's JSON answer ({e}); pipe it in, e.g. \
             `headroom tenants connect {tenant} {upstream} < grant.json`"
        )
    })?;
    let serde_json::Value::Object(map) = value else {
        anyhow::bail!("standard input must be a JSON object with \"access_token\"");
    };
    let kept: serde_json::Map<String, serde_json::Value> = map
        .into_iter()
        .filter(|(k, _)| {
            [
                "access_token",
                "refresh_token",
                "expires_in",
                "expires_at",
                "scope",
            ]
            .contains(&k.as_str())
        })
        .collect();
    if !kept.contains_key("access_token") {
        anyhow::bail!("the grant on standard input has no \"access_token\"");
    }
    Ok(serde_json::Value::Object(kept))
}

pub fn run_tokens(args: TokensArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    match args.command {
        TokensCommand::Create { tenant } => {
            let body = api.call(
                Method::POST,
                "/v1/tokens",
                Some(json!({ "tenant": tenant })),
            )?;
            print_json(&body);
        }
        TokensCommand::Revoke { id } => {
            api.call(Method::DELETE, &format!("/v1/tokens/{}", seg(&id)), None)?;
            println!("revoked token {id}");
        }
        TokensCommand::List { tenant } => {
            let path = match tenant {
                Some(t) => format!("/v1/tokens?tenant={}", seg(&t)),
                None => "/v1/tokens".to_string(),
            };
            let body = api.call(Method::GET, &path, None)?;
            print_json(&body);
        }
    }
    Ok(())
}

/// The credential from standard input: one line when typed at a terminal, else all of it,
/// less one trailing newline.
fn read_credential(tenant: &str, upstream: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut text = String::new();
    if stdin.is_terminal() {
        eprint!("credential of tenant {tenant} for upstream {upstream}: ");
        stdin
            .lock()
            .read_line(&mut text)
            .context("cannot read the credential from standard input")?;
    } else {
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("cannot read the credential from standard input (it must be text)")?;
    }
    let value = strip_newline(&text);
    if value.is_empty() {
        anyhow::bail!(
            "no credential on standard input; pipe it in, e.g. \
             `headroom tenants set {tenant} {upstream} < file`"
        );
    }
    check_credential_value(value).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(value.to_string())
}

fn strip_newline(text: &str) -> &str {
    match text.strip_suffix('\n') {
        Some(rest) => rest.strip_suffix('\r').unwrap_or(rest),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_removed() {
        assert_eq!(strip_newline("abc\n"), "abc");
        assert_eq!(strip_newline("abc\r\n"), "abc");
        assert_eq!(strip_newline("abc"), "abc");
        assert_eq!(strip_newline("abc\n\n"), "abc\n");
    }
}
