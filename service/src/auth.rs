//! Who is writing: `Authorization: Bearer <JWT>` checked on every write.
//!
//! HS256 tokens are checked with a shared secret (`FOLDLINE_JWT_SECRET`); RS256 and ES256
//! tokens with the keys of a JWKS URL (`FOLDLINE_JWKS_URL`), cached and refreshed — on a
//! timer and when a token names a key id the cache does not know (key rotation), at most
//! every few seconds. `exp` is required, `nbf`, `iss` and `aud` are checked where configured.
//! Claims: `sub`, `role` (`admin` | `seller`) and, for sellers, `seller_id`.
//!
//! The producer checks every write with it; the query API and the notifier check reads with
//! it when `FOLDLINE_READS_REQUIRE_TOKEN` is set ([`ReadAccess`]).

use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

/// Who sends a request: the token's subject and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's `sub`.
    pub subject: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// May act on any product.
    Admin,
    /// May create, change and delete only products of this seller id.
    Seller(String),
}

/// How tokens are checked.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthConfig {
    /// Secret of HS256 tokens.
    #[arg(long, env = "FOLDLINE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// JWKS URL with the public keys of RS256/ES256 tokens.
    #[arg(long, env = "FOLDLINE_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Required `iss` claim, if set.
    #[arg(long, env = "FOLDLINE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, if set.
    #[arg(long, env = "FOLDLINE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// How often the JWKS is fetched again, in seconds.
    #[arg(long, env = "FOLDLINE_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwks_refresh_secs: u64,
}

/// The shortest time between two JWKS fetches caused by unknown key ids.
const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token signing keys cannot be fetched: {0}")]
    KeysUnavailable(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    role: String,
    seller_id: Option<String>,
}

pub struct Authenticator {
    secret: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
}

struct Jwks {
    url: String,
    client: reqwest::Client,
    refresh: Duration,
    /// The keys and when they were fetched.
    cache: RwLock<Option<(Instant, JwkSet)>>,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> anyhow::Result<Authenticator> {
        anyhow::ensure!(
            config.jwt_secret.is_some() || config.jwks_url.is_some(),
            "writes need authentication: set FOLDLINE_JWT_SECRET (HS256) or FOLDLINE_JWKS_URL (RS256/ES256)"
        );
        Ok(Authenticator {
            secret: config
                .jwt_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks: config.jwks_url.as_ref().map(|url| Jwks {
                url: url.clone(),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("a plain HTTP client"),
                refresh: Duration::from_secs(config.jwks_refresh_secs.max(1)),
                cache: RwLock::new(None),
            }),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        })
    }

    /// The actor of a request, from its `Authorization` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Actor, AuthError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Invalid("the Authorization header is not text".into()))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?
            .trim();
        self.check(token).await
    }

    /// The actor of a bare token.
    pub async fn check(&self, token: &str) -> Result<Actor, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .secret
                .clone()
                .ok_or_else(|| AuthError::Invalid("HS256 tokens are not accepted here".into()))?,
            Algorithm::RS256 | Algorithm::ES256 => {
                let jwks = self.jwks.as_ref().ok_or_else(|| {
                    AuthError::Invalid(format!("{:?} tokens are not accepted here", header.alg))
                })?;
                jwks.key(header.kid.as_deref()).await?
            }
            other => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {other:?} is not accepted"
                )))
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.validate_nbf = true;
        validation.leeway = 5;
        match &self.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let claims = decode::<Claims>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        actor(claims)
    }
}

fn actor(claims: Claims) -> Result<Actor, AuthError> {
    if claims.sub.trim().is_empty() {
        return Err(AuthError::Invalid("`sub` is empty".into()));
    }
    // Every event carries the subject as its actor: it keeps the actor's limits.
    foldline_schemas::limits::check_actor(&claims.sub)
        .map_err(|v| AuthError::Invalid(format!("`{v}`")))?;
    let role = match claims.role.as_str() {
        "admin" => Role::Admin,
        "seller" => match claims.seller_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => Role::Seller(id.to_owned()),
            _ => {
                return Err(AuthError::Invalid(
                    "a seller token needs `seller_id`".into(),
                ))
            }
        },
        other => return Err(AuthError::Invalid(format!("unknown role {other:?}"))),
    };
    Ok(Actor {
        subject: claims.sub,
        role,
    })
}

impl Jwks {
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let fresh = {
            let cache = self.cache.read().await;
            match cache.as_ref() {
                Some((at, keys)) if at.elapsed() < self.refresh => find(keys, kid),
                _ => None,
            }
        };
        if let Some(key) = fresh {
            return key;
        }
        let mut cache = self.cache.write().await;
        // Another request may have refreshed meanwhile; a rotation is re-fetched at most
        // every few seconds, so a flood of unknown key ids does not flood the JWKS server.
        let due = match cache.as_ref() {
            None => true,
            Some((at, keys)) => {
                at.elapsed() >= self.refresh
                    || (find(keys, kid).is_none() && at.elapsed() >= UNKNOWN_KID_REFETCH)
            }
        };
        if due {
            match self.fetch().await {
                Ok(keys) => *cache = Some((Instant::now(), keys)),
                // Stale keys beat none while the JWKS server is down.
                Err(error) if cache.is_some() => {
                    tracing::warn!(%error, "JWKS refresh failed; keeping the cached keys")
                }
                Err(error) => return Err(AuthError::KeysUnavailable(error)),
            }
        }
        let keys = &cache.as_ref().expect("fetched or cached").1;
        find(keys, kid)
            .unwrap_or_else(|| Err(AuthError::Invalid(format!("no key {kid:?} in the JWKS"))))
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("JWKS answered {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }
}

fn find(keys: &JwkSet, kid: Option<&str>) -> Option<Result<DecodingKey, AuthError>> {
    let jwk = match kid {
        Some(kid) => keys.find(kid)?,
        None => keys.keys.first()?,
    };
    Some(DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Invalid(e.to_string())))
}

/// The answer to a request whose token was refused: 401 problem+json with a
/// `WWW-Authenticate` challenge, or 503 when the signing keys cannot be fetched.
pub fn refusal(error: AuthError) -> Response {
    if let AuthError::KeysUnavailable(detail) = error {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "auth-unavailable",
            "Tokens cannot be checked right now",
            detail,
        )
        .into_response();
    }
    let challenge = match &error {
        AuthError::Missing => "Bearer realm=\"foldline\"".to_owned(),
        other => format!(
            "Bearer realm=\"foldline\", error=\"invalid_token\", error_description=\"{}\"",
            other.to_string().replace(['"', '\\'], "'")
        ),
    };
    let detail = match &error {
        AuthError::Missing => "send Authorization: Bearer <JWT>".to_owned(),
        other => other.to_string(),
    };
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "A valid bearer token is required",
        detail,
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Whether reads (query API, SSE) need a token too.
#[derive(clap::Args, Debug, Clone)]
pub struct ReadAccess {
    /// Require a valid token (any role) for reads: `Authorization: Bearer`, or
    /// `?access_token=` where a browser cannot set headers (EventSource).
    #[arg(long, env = "FOLDLINE_READS_REQUIRE_TOKEN", default_value_t = false)]
    pub reads_require_token: bool,
    #[command(flatten)]
    pub auth: AuthConfig,
}

impl ReadAccess {
    /// The authenticator reads go through, or `None` when reads are open.
    pub fn authenticator(&self) -> anyhow::Result<Option<std::sync::Arc<Authenticator>>> {
        if !self.reads_require_token {
            return Ok(None);
        }
        Ok(Some(std::sync::Arc::new(Authenticator::new(&self.auth)?)))
    }
}

/// Middleware for read routes when reads require a token.
pub async fn require_reader(
    State(auth): State<std::sync::Arc<Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    let from_query = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("access_token="))
            .map(str::to_owned)
    });
    let checked = match from_query {
        Some(token) => auth.check(&token).await,
        None => auth.authenticate(request.headers()).await,
    };
    match checked {
        Ok(_) => next.run(request).await,
        Err(error) => refusal(error),
    }
}

/// `router`'s routes behind [`require_reader`] when reads require a token.
pub fn guard_reads(
    router: axum::Router,
    auth: Option<std::sync::Arc<Authenticator>>,
) -> axum::Router {
    match auth {
        Some(auth) => {
            router.route_layer(axum::middleware::from_fn_with_state(auth, require_reader))
        }
        None => router,
    }
}
