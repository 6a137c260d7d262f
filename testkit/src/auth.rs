//! Tokens for tests, minted with the secret the producers under test check
//! (`FOLDLINE_JWT_SECRET`, exported by scripts/test and passed to every spawned service).

use jsonwebtoken::{encode, EncodingKey, Header};

/// The HS256 secret of the stack under test.
pub fn secret() -> String {
    std::env::var("FOLDLINE_JWT_SECRET").unwrap_or_else(|_| "foldline-test-secret".into())
}

/// A token for `sub` with `role` (and `seller_id`), valid for `ttl_secs` from now (negative:
/// already expired).
pub fn token(sub: &str, role: &str, seller_id: Option<&str>, ttl_secs: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "sub": sub, "role": role, "seller_id": seller_id, "iat": now, "exp": now + ttl_secs,
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret().as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// An admin token valid for an hour.
pub fn admin_token() -> String {
    token("test-admin", "admin", None, 3600)
}

/// A client that sends the admin token with every request (tests that are not about
/// authentication write through this).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .default_headers(admin_headers())
        .build()
        .expect("a plain HTTP client")
}

/// `Authorization: Bearer <admin token>`, for clients built with other settings.
pub fn admin_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {}", admin_token());
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&value).expect("a token is header-safe"),
    );
    headers
}
