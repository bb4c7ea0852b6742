//! The dashboard's page and files, and the browser session: the token
//! traded for a cookie that the API accepts, and that never acts for a
//! request the dashboard did not place.

use super::{Api, TOKEN, assert_error, assert_nothing_created, marker_spec};
use reqwest::{Method, StatusCode, header};
use serde_json::json;

impl Api {
    /// A request carrying no token (as a browser sends it).
    fn bare(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// Logs in with `token`; the session cookie the server set.
    async fn login(&self, token: &str) -> (StatusCode, Option<String>) {
        let response = self
            .bare(Method::POST, "/v1/session")
            .json(&json!({ "token": token }))
            .send()
            .await
            .unwrap();
        let cookie = response
            .headers()
            .get(header::SET_COOKIE)
            .map(|value| value.to_str().unwrap().to_string());
        (response.status(), cookie)
    }

    /// A request carrying only the session cookie `session` (`name=value`).
    fn with_cookie(&self, method: Method, path: &str, session: &str) -> reqwest::RequestBuilder {
        self.bare(method, path).header(header::COOKIE, session)
    }
}

/// The `name=value` part of a `Set-Cookie` header.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_string()
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_without_a_token_with_a_strict_policy() {
    let api = Api::start().await;
    let page = api.bare(Method::GET, "/").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let policy = page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    let html = page.text().await.unwrap();
    // Everything the page loads is the server's own: no other host.
    assert!(
        !html.contains("://"),
        "the page loads from elsewhere: {html}"
    );
    assert!(html.contains("/ui/app.js"), "{html}");
    for path in [
        "/ui/app.js",
        "/ui/vendor/xterm/xterm.mjs",
        "/ui/vendor/diff2html/diff2html-ui-slim.min.js",
    ] {
        let response = api.bare(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/javascript"),
            "{path}"
        );
    }
    let (status, body) = api.json(api.bare(Method::GET, "/ui/no-such-file.js")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The page is open; the API behind it is not.
    let (status, _) = api.json(api.bare(Method::GET, "/v1/workspaces")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_login_with_the_token_sets_an_opaque_http_only_strict_cookie_the_api_accepts() {
    let api = Api::start().await;
    let (status, cookie) = api.login(TOKEN).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let cookie = cookie.unwrap();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is not the token: {cookie}"
    );
    let session = pair(&cookie);
    let (status, body) = api
        .json(api.with_cookie(Method::GET, "/v1/workspaces", &session))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The dashboard's own requests carry its origin, and change things.
    let port = api.base.rsplit(':').next().unwrap();
    let (status, body) = api
        .json(
            api.with_cookie(Method::POST, "/v1/workspaces", &session)
                .header(header::ORIGIN, format!("http://127.0.0.1:{port}"))
                .json(&json!({ "spec": { "runtime": "fake" } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Logging out ends the session on the server, not only in the browser.
    let response = api
        .with_cookie(Method::DELETE, "/v1/session", &session)
        .header(header::ORIGIN, format!("http://127.0.0.1:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, body) = api
        .json(api.with_cookie(Method::GET, "/v1/workspaces", &session))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        &["log in again"],
    );
}

#[tokio::test]
async fn a_wrong_token_gets_no_session_and_a_forged_cookie_no_access() {
    let api = Api::start().await;
    let (status, cookie) = api.login("not-the-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(cookie, None);
    for forged in [
        format!("berth_session={TOKEN}"),
        "berth_session=s_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
        "berth_session=".to_string(),
    ] {
        let (status, body) = api
            .json(api.with_cookie(Method::GET, "/v1/workspaces", &forged))
            .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized", &[]);
    }
}

#[tokio::test]
async fn a_cross_site_request_carrying_the_session_cookie_is_refused() {
    let api = Api::start().await;
    let marker = api.home.path().join("setup-ran");
    let session = pair(&api.login(TOKEN).await.1.unwrap());
    let port: u16 = api.base.rsplit(':').next().unwrap().parse().unwrap();
    // A page on another port of this host is the same site to the browser,
    // which then sends the cookie along: its origin is not the server's.
    for origin in [
        format!("http://127.0.0.1:{}", port ^ 1),
        "http://evil.example".to_string(),
        "null".to_string(),
    ] {
        let (status, body) = api
            .json(
                api.with_cookie(Method::POST, "/v1/workspaces", &session)
                    .header(header::ORIGIN, &origin)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(json!({ "spec": marker_spec(&marker) }).to_string()),
            )
            .await;
        assert_error(
            status,
            &body,
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            &[],
        );
    }
    // A request that changes anything with the cookie and no Origin at all
    // is not the dashboard's either.
    let (status, body) = api
        .json(
            api.with_cookie(Method::POST, "/v1/workspaces", &session)
                .json(&json!({ "spec": marker_spec(&marker) })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        &["POST", "Origin"],
    );
    assert_nothing_created(&api, &marker);
}
