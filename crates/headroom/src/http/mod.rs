//! The HTTP edge: the router, one module per resource, the auth extractors, and the helpers
//! every handler shares (JSON bodies, paging, store refusals). Handlers check what they are
//! given and call the parts below; they hold no state of their own.

pub mod auth;
pub mod batches;
pub mod budgets;
pub mod credentials;
pub mod exports;
pub mod health;
pub mod intake;
pub mod jobs;
pub mod oauth;
pub mod observe;
pub mod openapi;
pub mod proxy;
pub mod schedules;
pub mod ui;

use std::convert::Infallible;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

const MAX_PAGE: u32 = 500;

/// Parses a JSON body into `T`, with a 400 that names the field serde could not read.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the JSON body is not valid: {e}")))
}

/// Checks a listing's `limit` (default 100) and `cursor`, and gives the limit.
pub(crate) fn page_limit(limit: Option<u32>, cursor: Option<&str>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit: use 1 to {MAX_PAGE}")));
    }
    // Cursors are what a previous page gave: the sequence number of its last item.
    if let Some(c) = cursor {
        if c.parse::<i64>().map_or(true, |n| n < 0) {
            return Err(ApiError::bad_request(format!(
                "cursor: \"{c}\" is not a cursor this server gave; use next_cursor from the previous page"
            )));
        }
    }
    Ok(limit)
}

/// The documented routes: the API and health, each registered with its OpenAPI operation.
pub(crate) fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .merge(budgets::routes())
        .merge(credentials::routes())
        .merge(oauth::routes())
        .merge(intake::routes())
        .merge(jobs::routes())
        .merge(batches::routes())
        .merge(exports::routes())
        .merge(schedules::routes())
        .merge(observe::routes())
}

/// The documented routes' router and their document. Operation ids are prefixed with their
/// tag (`jobs_submit`, `batches_submit`), as handlers of different resources share names.
pub(crate) fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut document) = api_routes().split_for_parts();
    for item in document.paths.paths.values_mut() {
        let methods = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("options", &mut item.options),
            ("head", &mut item.head),
            ("patch", &mut item.patch),
            ("trace", &mut item.trace),
        ];
        // One handler for several methods (the proxy) gets one id per method.
        let shared = methods.iter().filter(|(_, op)| op.is_some()).count() > 1
            && methods
                .iter()
                .filter_map(|(_, op)| op.as_ref().and_then(|o| o.operation_id.clone()))
                .collect::<std::collections::HashSet<_>>()
                .len()
                == 1;
        for (method, op) in methods {
            let Some(op) = op else { continue };
            if let (Some(tag), Some(id)) =
                (op.tags.as_ref().and_then(|t| t.first()), &op.operation_id)
            {
                op.operation_id = Some(if shared {
                    format!("{tag}_{method}")
                } else {
                    format!("{tag}_{id}")
                });
            }
        }
    }
    (router, document)
}

/// What the edge serves: proxied calls go straight to the proxy, the rest through the API's
/// router. A proxied call is the hot path, and the router's matching, URL parameters and
/// middleware cost it about a tenth of the work of a whole call (BENCHMARKS §6) for nothing
/// it uses: the proxy reads its upstream and path from the URI itself.
#[derive(Clone)]
pub struct Service {
    state: AppState,
    router: Router,
}

impl Service {
    pub fn new(state: AppState) -> Service {
        Service {
            router: router(state.clone()),
            state,
        }
    }
}

/// What the server answers with: a proxied answer's body as the upstream sends it, or one
/// of Headroom's own.
pub type ResponseBody = crate::outbound::AnswerBody;

type ServiceFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<http::Response<ResponseBody>, Infallible>> + Send>,
>;

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Service {
    type Response = http::Response<ResponseBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> ServiceFuture {
        use axum::response::IntoResponse;
        use tower::ServiceExt;
        if !request.uri().path().starts_with("/proxy/") {
            use futures_util::FutureExt;
            let request = request.map(axum::body::Body::new);
            let answer = self.router.clone().oneshot(request);
            return Box::pin(answer.map(|r| r.map(|a| a.map(http_body_util::Either::Right))));
        }
        // The proxy takes hyper's body as it is: boxing it would cost an allocation per call.
        if self.state.api_token.is_none() {
            if let Err(refused) = auth::check_open_request(&request) {
                let refused = refused.into_response().map(http_body_util::Either::Right);
                return Box::pin(std::future::ready(Ok(refused)));
            }
        }
        let state = self.state.clone();
        Box::pin(async move { Ok(proxy::handle(state, request).await) })
    }
}

/// Headroom's own routes (the API, health, the OpenAPI document); with `auth = "none"`, each
/// behind the open-mode guard. Proxied calls do not come here (see [`Service`]).
fn router(state: AppState) -> Router {
    let open = state.api_token.is_none();
    let (api, document) = api();
    let document: Arc<str> = document
        .to_pretty_json()
        .expect("the document always serialises")
        .into();
    let router = api
        .route(
            "/openapi.json",
            get(move || {
                let document = Arc::clone(&document);
                async move {
                    (
                        [(http::header::CONTENT_TYPE, "application/json")],
                        document.to_string(),
                    )
                }
            }),
        )
        .merge(ui::routes())
        .layer(axum::middleware::map_response(
            crate::error::problem_for_rejections,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.config.server.body_read_timeout,
            crate::edge::body_deadline,
        ))
        .fallback(not_found)
        .with_state(state);
    if open {
        router.layer(axum::middleware::from_fn(auth::open_guard))
    } else {
        router
    }
}

async fn not_found(uri: http::Uri) -> crate::error::ApiError {
    crate::error::ApiError::not_found(format!(
        "no route for {}; the proxy is at /proxy/{{upstream}}/{{path}}, the API under /v1",
        uri.path()
    ))
}
