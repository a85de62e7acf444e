//! The HTTP client the GA identity library sends its token requests through: the `reqwest` 0.12
//! (rustls on ring) the ARM client already uses, instead of the library's own `reqwest` 0.13,
//! which would bring a second HTTP stack and aws-lc's C build into the tree.
//!
//! It also carries the one exception to "authorities are https": an authority host on loopback
//! given as `http://` (the emulator's Entra ID). The library refuses a non-https authority, so it
//! is configured with the `https://` form of that origin and this client sends requests for
//! exactly that loopback origin in plain HTTP. Every other request goes out as the library built
//! it.

use azure_core_ga::http::{
    AsyncRawResponse, Body, HttpClient, Method, Request, StatusCode,
    headers::{HeaderName, HeaderValue, Headers},
};
use futures::TryStreamExt;
use std::collections::HashMap;
use std::time::Duration;

/// `reqwest` 0.12 for the identity library.
#[derive(Debug, Clone)]
pub struct IdentityHttp {
    client: reqwest::Client,
    /// `host:port` of a loopback authority given as `http://`.
    plain_loopback: Option<String>,
}

impl IdentityHttp {
    /// A client; `plain_loopback` is the `host:port` to reach over plain HTTP (loopback only:
    /// the caller checked).
    pub fn new(plain_loopback: Option<String>) -> IdentityHttp {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        IdentityHttp {
            client,
            plain_loopback,
        }
    }

    /// The URL the request really goes to.
    fn target(&self, url: &url::Url) -> url::Url {
        let mut url = url.clone();
        let authority = |u: &url::Url| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or_default(),
                u.port_or_known_default().unwrap_or(443)
            )
        };
        if url.scheme() == "https"
            && self
                .plain_loopback
                .as_deref()
                .is_some_and(|a| a == authority(&url))
        {
            // Same host and port, plain HTTP; `set_scheme` keeps an explicit port.
            let _ = url.set_scheme("http");
        }
        url
    }
}

fn method(m: Method) -> reqwest::Method {
    match m {
        Method::Delete => reqwest::Method::DELETE,
        Method::Get => reqwest::Method::GET,
        Method::Head => reqwest::Method::HEAD,
        Method::Patch => reqwest::Method::PATCH,
        Method::Put => reqwest::Method::PUT,
        // POST, and any method a later library version adds (reqwest takes it by name).
        other => {
            reqwest::Method::from_bytes(other.as_str().as_bytes()).unwrap_or(reqwest::Method::POST)
        }
    }
}

fn error(kind: azure_core_ga::error::ErrorKind, e: reqwest::Error) -> azure_core_ga::Error {
    azure_core_ga::Error::with_error(kind, e, "token request failed")
}

#[async_trait::async_trait]
impl HttpClient for IdentityHttp {
    async fn execute_request(&self, request: &Request) -> azure_core_ga::Result<AsyncRawResponse> {
        use azure_core_ga::error::ErrorKind;
        let mut req = self
            .client
            .request(method(request.method()), self.target(request.url()));
        for (name, value) in request.headers().iter() {
            req = req.header(name.as_str(), value.as_str());
        }
        req = match request.body() {
            Body::Bytes(b) => req.body(b.clone()),
            Body::SeekableStream(_) => {
                return Err(azure_core_ga::Error::with_message(
                    ErrorKind::Other,
                    "streamed request bodies are not used by token requests",
                ));
            }
        };
        let resp = req.send().await.map_err(|e| {
            let kind = if e.is_connect() {
                ErrorKind::Connection
            } else {
                ErrorKind::Io
            };
            error(kind, e)
        })?;
        let status = StatusCode::from(resp.status().as_u16());
        let headers: HashMap<HeaderName, HeaderValue> = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                let v = v.to_str().ok()?;
                Some((
                    HeaderName::from(k.as_str().to_string()),
                    HeaderValue::from(v.to_string()),
                ))
            })
            .collect();
        let body = resp.bytes_stream().map_err(|e| error(ErrorKind::Io, e));
        Ok(AsyncRawResponse::new(
            status,
            Headers::from(headers),
            Box::pin(body),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_plain_loopback_origin_is_sent_in_plain_http() {
        let c = IdentityHttp::new(Some("127.0.0.1:8123".into()));
        let t = |s: &str| c.target(&url::Url::parse(s).unwrap()).to_string();
        assert_eq!(
            t("https://127.0.0.1:8123/t/oauth2/v2.0/token"),
            "http://127.0.0.1:8123/t/oauth2/v2.0/token"
        );
        assert_eq!(t("https://127.0.0.1:9999/x"), "https://127.0.0.1:9999/x");
        assert_eq!(
            t("https://login.microsoftonline.com/t"),
            "https://login.microsoftonline.com/t"
        );
        let none = IdentityHttp::new(None);
        assert_eq!(
            none.target(&url::Url::parse("https://127.0.0.1:8123/x").unwrap())
                .scheme(),
            "https"
        );
    }
}
