//! The client's transport: raw requests through the shared pipeline (auth, retries, rate
//! limits and metrics are the pipeline policy's), long-running-operation polling that honours
//! `Retry-After`, raw paging that never follows a `nextLink` off the ARM endpoint, and ARM's
//! errors as [`ArmError`]s.

use super::{API_VERSION, AzureNetworkApi};
use crate::azure::{ArmError, ErrorClass};
use azure_core::{Context, Method, Request, Url};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The most a response's `Content-Length` may make us reserve up front (more is grown into).
const MAX_PREALLOCATED_BODY: usize = 16 << 20;

pub(super) fn arm_err(
    operation: &'static str,
    resource: impl Into<String>,
    e: azure_core::Error,
) -> ArmError {
    let resource = resource.into();
    // A URL off the ARM endpoint: the pipeline refused it before attaching the token.
    if let Some(f) = e.downcast_ref::<crate::azure::policy::ForeignOrigin>() {
        return ArmError::local(
            ErrorClass::Retryable,
            operation,
            resource,
            Some(crate::azure::policy::FOREIGN_ORIGIN),
            f.to_string(),
        );
    }
    // No token could be had: Entra ID's refusal (a human must act) or its outage (retry).
    if let Some(f) = e.downcast_ref::<crate::azure::identity::EntraFailure>() {
        return ArmError::local(
            f.class,
            operation,
            resource,
            f.code.as_deref(),
            f.message.clone(),
        );
    }
    match e.as_http_error() {
        Some(h) => {
            let status = u16::from(h.status());
            let code = h.error_code().map(str::to_string);
            ArmError::http(
                operation,
                resource,
                status,
                code,
                h.error_message().unwrap_or("no message").to_string(),
            )
        }
        None => ArmError::local(
            ErrorClass::Retryable,
            operation,
            resource,
            None,
            e.to_string(),
        ),
    }
}

/// A long-running operation whose monitor URL could not be read on ARM: the write may have
/// happened, but it is never reported done.
fn unconfirmed(mut e: ArmError) -> ArmError {
    if e.code.as_deref() == Some(crate::azure::policy::FOREIGN_ORIGIN) {
        e.message = format!(
            "the write was accepted but its completion cannot be confirmed on ARM, so it is not reported done: {}",
            e.message
        );
    }
    e
}

pub fn http_error(operation: &'static str, resource: &str, status: u16, body: &[u8]) -> ArmError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v
        .pointer("/error/code")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_string();
    if let Some(denial) = policy_violation(&v) {
        message = denial;
    }
    ArmError::http(operation, resource, status, code, message)
}

/// For `RequestDisallowedByPolicy`: the Azure Policy assignment and definition that denied the
/// request (`error.additionalInfo[]` of type `PolicyViolation`), and what to do about it.
pub fn policy_violation(body: &Value) -> Option<String> {
    let info = body
        .pointer("/error/additionalInfo")
        .and_then(Value::as_array)?
        .iter()
        .find(|i| i["type"] == "PolicyViolation")?
        .get("info")?;
    let field = |k: &str| info.get(k).and_then(Value::as_str).unwrap_or("?");
    Some(format!(
        "denied by Azure Policy assignment '{}' ({}) at scope {}, definition '{}' ({}, effect {}); ask for a policy exemption covering these route tables, or for the definition's parameters to allow next hop Internet to the KMS addresses",
        field("policyAssignmentDisplayName"),
        field("policyAssignmentName"),
        field("policyAssignmentScope"),
        field("policyDefinitionDisplayName"),
        field("policyDefinitionName"),
        field("policyDefinitionEffect"),
    ))
}

/// Marks a request so the policy keeps its error body (ARM's `additionalInfo`); returns the
/// mark.
fn mark(req: &mut Request) -> String {
    let request_id = format!(
        "{}{}",
        crate::azure::policy::ERROR_BODY_PREFIX,
        uuid::Uuid::new_v4().simple()
    );
    req.insert_header(azure_core::headers::CLIENT_REQUEST_ID, request_id.clone());
    request_id
}

impl AzureNetworkApi {
    pub(super) fn url(&self, path: &str) -> Url {
        let mut url = self.endpoint.clone();
        url.set_path(path);
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION);
        url
    }

    /// Sends a raw request with auth through the shared pipeline; returns status, headers, body.
    pub(super) async fn raw(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        headers: &[(&'static str, String)],
    ) -> azure_core::Result<(u16, azure_core::headers::Headers, Vec<u8>)> {
        let mut req = Request::new(url, method);
        let request_id = mark(&mut req);
        for (k, v) in headers {
            req.insert_header(*k, v.clone());
        }
        if let Some(b) = body {
            req.insert_header("content-type", "application/json");
            req.set_body(b);
        }
        let outcome = match self.pipeline.send(&Context::new(), &mut req).await {
            Ok(resp) => {
                let (status, headers, mut body) = resp.deconstruct();
                // Collected into one buffer sized by Content-Length: growing one chunk by
                // chunk and copying it out again was most of a steady refresh's CPU (malloc and
                // memmove in `perf` at 100,000 subnets).
                let size = headers
                    .get_optional_str(&azure_core::headers::CONTENT_LENGTH)
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(0)
                    .min(MAX_PREALLOCATED_BODY);
                let mut bytes = Vec::with_capacity(size);
                while let Some(chunk) = body.next().await {
                    bytes.extend_from_slice(&chunk?);
                }
                Ok((u16::from(status), headers, bytes))
            }
            Err(e) => self
                .error_outcome(e, &request_id)
                .map(|(status, body)| (status, azure_core::headers::Headers::new(), body)),
        };
        if let Ok(mut b) = self.error_bodies.lock() {
            b.remove(&request_id);
        }
        outcome
    }

    /// A raw GET whose body is kept as the chunks it arrived in (a list page: hashed chunk by
    /// chunk, parsed only when it changed), never gathered into one buffer.
    pub(super) async fn raw_get_chunks(
        &self,
        url: Url,
    ) -> azure_core::Result<(u16, Vec<bytes::Bytes>)> {
        let mut req = Request::new(url, Method::Get);
        let request_id = mark(&mut req);
        let outcome = match self.pipeline.send(&Context::new(), &mut req).await {
            Ok(resp) => {
                let (status, _, mut body) = resp.deconstruct();
                let mut chunks = Vec::new();
                while let Some(chunk) = body.next().await {
                    chunks.push(chunk?);
                }
                Ok((u16::from(status), chunks))
            }
            Err(e) => self
                .error_outcome(e, &request_id)
                .map(|(status, body)| (status, vec![bytes::Bytes::from(body)])),
        };
        if let Ok(mut b) = self.error_bodies.lock() {
            b.remove(&request_id);
        }
        outcome
    }

    /// The pipeline turns non-2xx answers into errors; callers here branch on the status (412
    /// means re-read), so give it back with ARM's error body.
    fn error_outcome(
        &self,
        e: azure_core::Error,
        request_id: &str,
    ) -> azure_core::Result<(u16, Vec<u8>)> {
        let Some(h) = e.as_http_error() else {
            return Err(e);
        };
        let kept = self
            .error_bodies
            .lock()
            .ok()
            .and_then(|mut b| b.remove(request_id));
        let body = kept.unwrap_or_else(|| {
            json!({"error": {"code": h.error_code(), "message": h.error_message()}})
                .to_string()
                .into_bytes()
        });
        Ok((u16::from(h.status()), body))
    }

    /// Waits for a long-running operation started by a response with these headers.
    pub(super) async fn wait(
        &self,
        operation: &'static str,
        resource: &str,
        headers: &azure_core::headers::Headers,
    ) -> Result<(), ArmError> {
        self.wait_result(operation, resource, headers)
            .await
            .map(|_| ())
    }

    /// [`Self::wait`], returning the final body (a POST action's result from `Location`).
    pub(super) async fn wait_result(
        &self,
        operation: &'static str,
        resource: &str,
        headers: &azure_core::headers::Headers,
    ) -> Result<Value, ArmError> {
        super::release_send_slot();
        let fail = |class, code: Option<String>, message: String| {
            ArmError::local(class, operation, resource, code.as_deref(), message)
        };
        let async_op = headers
            .get_optional_str(&azure_core::headers::AZURE_ASYNCOPERATION)
            .map(str::to_string);
        let location = headers
            .get_optional_str(&azure_core::headers::LOCATION)
            .map(str::to_string);
        let Some((url, by_status)) = async_op.map(|u| (u, false)).or(location.map(|u| (u, true)))
        else {
            return Ok(Value::Null);
        };
        let url = Url::parse(&url)
            .map_err(|e| fail(ErrorClass::Retryable, None, format!("bad monitor URL: {e}")))?;
        let deadline = Instant::now() + self.lro_timeout;
        // ARM asks clients to wait the initial response's Retry-After before the first poll.
        // Polling at once costs a read from the subscription's budget for an answer that is
        // almost always InProgress (measured: 2,500 extra reads in the dense bench estate).
        let first_pause = headers
            .get_optional_str(&azure_core::headers::RETRY_AFTER)
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(Duration::ZERO, |s| {
                Duration::from_secs(s).min(Duration::from_secs(60))
            });
        if !first_pause.is_zero() && Instant::now() + first_pause < deadline {
            tokio::time::sleep(first_pause).await;
        }
        loop {
            let (status, h, body) = self
                .raw(Method::Get, url.clone(), None, &[])
                .await
                .map_err(|e| unconfirmed(arm_err(operation, resource, e)))?;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if by_status && status >= 400 {
                return Err(http_error(operation, resource, status, &body));
            }
            let done = if by_status {
                status != 202
            } else {
                match v["status"].as_str().unwrap_or("InProgress") {
                    "Succeeded" => true,
                    "InProgress" | "Accepted" | "Running" | "Updating" | "Deleting" => false,
                    other => {
                        let code = v
                            .pointer("/error/code")
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        let msg = v
                            .pointer("/error/message")
                            .and_then(Value::as_str)
                            .unwrap_or("no message");
                        return Err(fail(
                            ErrorClass::Retryable,
                            code,
                            format!("long-running operation ended {other}: {msg}"),
                        ));
                    }
                }
            };
            if done {
                return Ok(v);
            }
            let pause = h
                .get_optional_str(&azure_core::headers::RETRY_AFTER)
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(Duration::from_secs(2), Duration::from_secs)
                .clamp(Duration::from_millis(50), Duration::from_secs(60));
            if Instant::now() + pause > deadline {
                return Err(fail(
                    ErrorClass::Retryable,
                    None,
                    format!(
                        "long-running operation still running after {:?}",
                        self.lro_timeout
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// A raw listing page's `nextLink`, if any (the pipeline refuses one off the ARM endpoint).
    fn next_link(
        &self,
        operation: &'static str,
        resource: &str,
        page: &Value,
    ) -> Result<Option<Url>, ArmError> {
        page["nextLink"]
            .as_str()
            .map(|next| self.parse_next_link(operation, resource, next))
            .transpose()
    }

    /// A `nextLink` as a URL. Where it may lead is the pipeline's business: a request off the
    /// ARM endpoint's origin is refused there, for every caller (`ArmPolicy::send`).
    pub(super) fn parse_next_link(
        &self,
        operation: &'static str,
        resource: &str,
        next: &str,
    ) -> Result<Url, ArmError> {
        Url::parse(next).map_err(|e| {
            ArmError::local(
                ErrorClass::Retryable,
                operation,
                resource,
                None,
                format!("nextLink: {e}"),
            )
        })
    }

    /// Follows a raw listing from `url`, handing each page to `each`: `Ok(true)` when the
    /// listing ended, `Ok(false)` when it was cut after `cut` pages. Held to the client's
    /// [`ListLimits`](super::ListLimits) like every listing.
    pub(super) async fn raw_pages(
        &self,
        operation: &'static str,
        resource: &str,
        mut url: Url,
        cut: Option<usize>,
        mut each: impl FnMut(&Value),
    ) -> Result<bool, ArmError> {
        let mut pages = self.pages(operation, resource);
        self.bounded(operation, resource, async {
            loop {
                let (status, _, body) = self
                    .raw(Method::Get, url.clone(), None, &[])
                    .await
                    .map_err(|e| arm_err(operation, resource, e))?;
                if status != 200 {
                    return Err(http_error(operation, resource, status, &body));
                }
                let page: Value = serde_json::from_slice(&body).map_err(|e| {
                    ArmError::local(
                        ErrorClass::Retryable,
                        operation,
                        resource,
                        None,
                        format!("unreadable page: {e}"),
                    )
                })?;
                each(&page);
                if cut.is_some_and(|c| pages.count() + 1 >= c) && page["nextLink"].is_string() {
                    return Ok(false);
                }
                match self.next_link(operation, resource, &page)? {
                    Some(next) => {
                        pages.follow(next.as_str())?;
                        url = next;
                    }
                    None => return Ok(true),
                }
            }
        })
        .await
    }

    /// A new listing's bounds.
    pub(super) fn pages(&self, operation: &'static str, resource: &str) -> Pages {
        Pages {
            operation,
            resource: resource.to_string(),
            limits: self.listing,
            count: 0,
            links: std::collections::HashSet::new(),
        }
    }

    /// Runs a whole listing within its wall-clock limit (a page that hangs included).
    pub(super) async fn bounded<T>(
        &self,
        operation: &'static str,
        resource: &str,
        listing: impl std::future::Future<Output = Result<T, ArmError>>,
    ) -> Result<T, ArmError> {
        tokio::time::timeout(self.listing.max_time, listing)
            .await
            .unwrap_or_else(|_| {
                Err(unbounded(
                    operation,
                    resource,
                    LISTING_TIMED_OUT,
                    format!(
                        "the listing did not end within {:?}; it was stopped",
                        self.listing.max_time
                    ),
                ))
            })
    }
}

/// A listing longer than the page limit.
pub const LISTING_TOO_LONG: &str = "ListingTooLong";
/// A `nextLink` that leads back to a page already read.
pub const LISTING_LOOP: &str = "ListingLoop";
/// A listing that did not end within its time.
pub const LISTING_TIMED_OUT: &str = "ListingTimedOut";

fn unbounded(operation: &'static str, resource: &str, code: &str, message: String) -> ArmError {
    ArmError::local(
        ErrorClass::Retryable,
        operation,
        resource,
        Some(code),
        message,
    )
}

/// One listing's progress against its page bounds (see [`ListLimits`](super::ListLimits)):
/// pages, and the `nextLink`s already followed. Its wall-clock bound is [`AzureNetworkApi::bounded`]'s.
pub(super) struct Pages {
    operation: &'static str,
    resource: String,
    limits: super::ListLimits,
    count: usize,
    /// Hashes of the `nextLink`s followed (8 bytes a page, not the URL).
    links: std::collections::HashSet<u64>,
}

impl Pages {
    /// Pages read so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// A page was read and points at `next`: `Ok` to follow it, or the bound following it
    /// would cross.
    pub fn follow(&mut self, next: &str) -> Result<(), ArmError> {
        use std::hash::{BuildHasher, Hasher};
        self.count += 1;
        let fail = |code, message| unbounded(self.operation, &self.resource, code, message);
        if self.count >= self.limits.max_pages {
            return Err(fail(
                LISTING_TOO_LONG,
                format!(
                    "more than {} pages (the page limit of one listing); ARM kept handing out nextLinks, so the listing was stopped",
                    self.limits.max_pages
                ),
            ));
        }
        let mut h = LINK_KEYS.get_or_init(Default::default).build_hasher();
        h.write(next.as_bytes());
        if !self.links.insert(h.finish()) {
            return Err(fail(
                LISTING_LOOP,
                format!(
                    "page {} points back at a page already read (nextLink {}); the listing was stopped",
                    self.count,
                    next.split('?').next().unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }
}

static LINK_KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
    std::sync::OnceLock::new();
