//! Sessions, CSRF and the security headers.
//!
//! A session is a sign-in token (the same kind `AuthService.SignIn` gives) kept in an HttpOnly,
//! SameSite=Strict cookie scoped to the console's path, so the JSON and gRPC APIs never see it
//! and keep bearer tokens. Every state-changing request carries a CSRF token, an HMAC of the
//! session token under the console's key, and must come from the console's own origin.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use hmac::{KeyInit, Mac};

use crate::CONSOLE_PATH;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "chamberlain_session";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The session token the request's cookie carries.
pub(crate) fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The cookie that keeps `token` for `max_age_secs`.
pub(crate) fn session_cookie(token: &str, max_age_secs: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path={CONSOLE_PATH}; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The cookie that ends the session in the browser.
pub(crate) fn cleared_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "chamberlain_session=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
    )
}

fn mac(key: &[u8], session: &str) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| {
        // HMAC takes a key of any length.
        unreachable!("an HMAC key of any length is accepted")
    });
    mac.update(b"chamberlain console csrf\0");
    mac.update(session.as_bytes());
    mac
}

/// The CSRF token of a session, for its forms.
pub(crate) fn csrf_token(key: &[u8], session: &str) -> String {
    mac(key, session)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `given` is the session's CSRF token (compared in constant time).
pub(crate) fn csrf_matches(key: &[u8], session: &str, given: &str) -> bool {
    let Some(bytes) = decode_hex(given) else {
        return false;
    };
    mac(key, session).verify_slice(&bytes).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether a state-changing request comes from the console's own pages: the browser says so
/// (`Sec-Fetch-Site`), or its `Origin` is this host. A request with neither (an old browser, a
/// script) still needs the CSRF token.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        return site == "same-origin" || site == "none";
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Headers on every answer: a Content-Security-Policy without inline script, no framing, no
/// sniffing, no referrer outside the console, and nothing cached that a session shows.
pub(crate) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    // A route with a policy of its own (the queue view's WASM app) keeps it.
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_belongs_to_its_session_and_key() {
        let token = csrf_token(b"key-one", "session-a");
        assert!(csrf_matches(b"key-one", "session-a", &token));
        assert!(!csrf_matches(b"key-one", "session-b", &token));
        assert!(!csrf_matches(b"key-two", "session-a", &token));
        assert!(!csrf_matches(b"key-one", "session-a", ""));
        assert!(!csrf_matches(b"key-one", "session-a", "zz"));
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; chamberlain_session=chm_abc; x=1"),
        );
        assert_eq!(session_token(&headers).as_deref(), Some("chm_abc"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("chamberlain_session="),
        );
        assert_eq!(session_token(&headers), None);
    }

    #[test]
    fn a_cross_site_request_is_not_same_origin() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("lab:8080"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://lab:8080"));
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&headers));
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&headers));
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&headers));
    }
}
