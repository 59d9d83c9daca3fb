//! GET and HEAD: find what the cache holds for the request and let
//! [`reuse::decide`] say what it may do — answer, answer stale and
//! revalidate in the background, revalidate first — or go upstream on a miss.

use std::sync::Arc;

use http::{Request, Response};

use super::body::C3Body;
use super::context::Shared;
use super::context::{CacheBody, Ctx, RequestBody, Upstream, forwarded, request_directives};
use super::find::{Found, find};
use super::key::RequestUri;
use super::policy::Policy;
use super::reuse::{self, Reuse};
use super::serve::{gateway_timeout, serve};
use super::status::{CacheStatus, Fwd};
use super::stored::StoredResponse;
use super::{miss, revalidate};

/// The GET/HEAD flow.
pub(crate) async fn lookup<S, P, ReqBody, ResBody>(
    shared: Arc<Shared<P>>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<C3Body<ResBody>>, S::Error>
where
    S: Upstream<ReqBody, ResBody>,
    P: Policy,
    ReqBody: RequestBody,
    ResBody: CacheBody,
{
    let (parts, body) = req.into_parts();
    let c3 = &shared.c3;
    let uri = RequestUri::from_request_with(
        &parts,
        &shared.config.default_scheme,
        shared.config.fixed_authority.as_deref(),
    )
    .filter(|u| {
        u.primary_key().len() <= c3.max_key_bytes() && u.uri_tag().len() <= c3.max_key_bytes()
    });
    let Some(uri) = uri.filter(|_| shared.policy.cacheable(&parts)) else {
        let res = inner.call(Request::from_parts(parts, body)).await?;
        return Ok(forwarded(res, CacheStatus::fwd(Fwd::Bypass)));
    };
    let dirs = request_directives(&parts.headers);
    let ctx = Ctx {
        shared,
        parts,
        dirs,
        uri,
    };
    match find(&ctx.shared, &ctx.uri, &ctx.parts.headers).await {
        Found::Miss { key, fwd } => {
            if ctx.dirs.only_if_cached {
                return Ok(gateway_timeout());
            }
            // Boxed: the miss's state (the upstream call, the store) would
            // otherwise be part of every lookup's future, hits included,
            // and be copied each time the future moves.
            Box::pin(miss::miss(&ctx, inner, body, key, fwd)).await
        }
        Found::Hit { stored, key, tier } => answer(&ctx, inner, body, stored, key, tier).await,
    }
}

/// A stored response was found: what may it do for this request?
async fn answer<S, P, ReqBody, ResBody>(
    ctx: &Ctx<P>,
    mut inner: S,
    body: ReqBody,
    stored: Arc<StoredResponse>,
    key: String,
    tier: &'static str,
) -> Result<Response<C3Body<ResBody>>, S::Error>
where
    S: Upstream<ReqBody, ResBody>,
    P: Policy,
    ReqBody: RequestBody,
    ResBody: CacheBody,
{
    match reuse::decide(&stored, &ctx.parts, &ctx.dirs, ctx.now_us()) {
        Reuse::Fresh { age, ttl } => Ok(serve(
            &stored,
            &ctx.parts,
            age,
            CacheStatus::hit().ttl(ttl).detail(tier),
        )),
        Reuse::MaxStale { age } => Ok(serve(
            &stored,
            &ctx.parts,
            age,
            CacheStatus::hit().detail("max-stale"),
        )),
        Reuse::WhileRevalidate { age } => {
            revalidate::in_background(ctx, inner.clone(), key, Arc::clone(&stored));
            Ok(serve(
                &stored,
                &ctx.parts,
                age,
                CacheStatus::hit().detail("stale-while-revalidate"),
            ))
        }
        Reuse::Never("authorization") => {
            let res = inner
                .call(Request::from_parts(ctx.parts.clone(), body))
                .await?;
            Ok(forwarded(
                res,
                CacheStatus::fwd(Fwd::Bypass).detail("authorization"),
            ))
        }
        // Stored for another selection under this key (an entry written
        // before selections were recorded this way): a miss that replaces it.
        Reuse::Never(_) => Box::pin(miss::miss(ctx, inner, body, Some(key), Fwd::VaryMiss)).await,
        Reuse::Revalidate { .. } if ctx.dirs.only_if_cached => Ok(gateway_timeout()),
        Reuse::Revalidate {
            age,
            stale_if_error,
        } => {
            Box::pin(revalidate::revalidate(
                ctx,
                inner,
                stored,
                key,
                age,
                stale_if_error,
            ))
            .await
        }
    }
}
