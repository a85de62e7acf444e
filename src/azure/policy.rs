//! The ARM pipeline policy every request passes through: per-subscription client-side token
//! buckets (sized below ARM's documented limits and fed by `x-ms-ratelimit-remaining-*`),
//! per-attempt timeouts, retries with exponential backoff and jitter that honour `Retry-After`,
//! and metrics. It replaces the SDK's retry policy (configured off) because that one hides
//! the headers we need and cannot tell `AnotherOperationInProgress` from other 409s.

use super::credential::Credentials;
use super::metrics::ArmMetrics;
use azure_core::{Context, Policy, PolicyResult, Request, Response, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Retry and timeout settings.
#[derive(Debug, Clone)]
pub struct RetrySettings {
    pub max_attempts: u32,
    /// No retry is started once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Per attempt; a request that hangs longer is abandoned (and retried).
    pub timeout: Duration,
    /// Attempts when the endpoint cannot be reached at all (connection refused, DNS, TLS).
    pub connect_attempts: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 8,
            max_elapsed: Duration::from_secs(300),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
            connect_attempts: 3,
        }
    }
}

/// A client-side bucket shape per subscription.
#[derive(Debug, Clone, Copy)]
pub struct BucketShape {
    pub capacity: f64,
    pub refill_per_sec: f64,
}

/// Client-side limits: ARM's documented buckets (reads 250 + 25/s, writes 200 + 10/s). They are
/// only an upper bound: every response's `x-ms-ratelimit-remaining-*` lowers our count to what
/// ARM says is left (other clients share the budget), so 429s stay rare without paying a fixed
/// safety margin in wall time.
///
/// The Network resource provider adds its own windows on top, per subscription: at most 10,000
/// reads and 1,000 writes/deletes per 5 minutes (`provider_reads` / `provider_writes`, as
/// buckets that refill the window's budget evenly). A request takes a token from both.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    pub reads: BucketShape,
    pub writes: BucketShape,
    pub provider_reads: Option<BucketShape>,
    pub provider_writes: Option<BucketShape>,
}

/// The Network RP's window: 5 minutes.
pub const PROVIDER_WINDOW_SECS: f64 = 300.0;

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            reads: BucketShape {
                capacity: 250.0,
                refill_per_sec: 25.0,
            },
            writes: BucketShape {
                capacity: 200.0,
                refill_per_sec: 10.0,
            },
            provider_reads: Some(BucketShape {
                capacity: 10_000.0,
                refill_per_sec: 10_000.0 / PROVIDER_WINDOW_SECS,
            }),
            provider_writes: Some(BucketShape {
                capacity: 1_000.0,
                refill_per_sec: 1_000.0 / PROVIDER_WINDOW_SECS,
            }),
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    paused_until: Option<Instant>,
}

/// Per-subscription token buckets shared by every request of a client.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    /// By (subscription, read, tier): tier 0 is ARM's bucket, tier 1 the Network RP's window.
    buckets: Mutex<HashMap<(String, bool, u8), Bucket>>,
    /// The last `x-ms-ratelimit-remaining-subscription-reads` ARM sent, per subscription (a
    /// plain mutex: read by the inventory's pacing outside any request).
    reported_reads: std::sync::Mutex<HashMap<String, f64>>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            limits,
            buckets: Mutex::new(HashMap::new()),
            reported_reads: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The read bucket's shape (what ARM allows a subscription).
    pub fn read_shape(&self) -> BucketShape {
        self.limits.reads
    }

    /// What ARM last said was left of the subscription's read budget, if it said so.
    pub fn reported_reads(&self, subscription: &str) -> Option<f64> {
        self.reported_reads
            .lock()
            .ok()
            .and_then(|m| m.get(subscription).copied())
    }

    fn shape(&self, read: bool) -> BucketShape {
        if read {
            self.limits.reads
        } else {
            self.limits.writes
        }
    }

    fn provider_shape(&self, read: bool) -> Option<BucketShape> {
        if read {
            self.limits.provider_reads
        } else {
            self.limits.provider_writes
        }
    }

    /// One attempt at a token of every tier: `None` when taken, else how long until one may be.
    async fn take(&self, subscription: &str, read: bool) -> Option<Duration> {
        let tiers: Vec<(u8, BucketShape)> = std::iter::once((0, self.shape(read)))
            .chain(self.provider_shape(read).map(|s| (1, s)))
            .collect();
        let mut buckets = self.buckets.lock().await;
        let now = Instant::now();
        let mut wait: Option<Duration> = None;
        for &(tier, shape) in &tiers {
            let b = buckets
                .entry((subscription.to_string(), read, tier))
                .or_insert(Bucket {
                    tokens: shape.capacity,
                    last: now,
                    paused_until: None,
                });
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * shape.refill_per_sec)
                .min(shape.capacity);
            b.last = now;
            let need = match b.paused_until {
                Some(until) if until > now => Some(until - now),
                _ if b.tokens >= 1.0 => None,
                // A bucket that never refills (a budget of N and no more) waits "forever".
                _ if shape.refill_per_sec <= 0.0 => Some(Duration::from_secs(3600)),
                _ => Some(
                    Duration::from_secs_f64((1.0 - b.tokens) / shape.refill_per_sec) + REFILL_SLACK,
                ),
            };
            wait = wait.max(need);
        }
        if wait.is_some() {
            return wait;
        }
        for &(tier, _) in &tiers {
            if let Some(b) = buckets.get_mut(&(subscription.to_string(), read, tier)) {
                b.tokens -= 1.0;
            }
        }
        None
    }

    /// Waits for a token of the subscription's read or write bucket.
    pub async fn acquire(&self, subscription: &str, read: bool) {
        while let Some(wait) = self.take(subscription, read).await {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes a token if one is there now; never waits.
    pub async fn try_acquire(&self, subscription: &str, read: bool) -> bool {
        self.take(subscription, read).await.is_none()
    }

    /// Adopts ARM's own count when it is lower than ours (other clients share the budget).
    pub async fn observe_remaining(&self, subscription: &str, read: bool, remaining: f64) {
        if read && let Ok(mut m) = self.reported_reads.lock() {
            m.insert(subscription.to_string(), remaining);
        }
        let mut buckets = self.buckets.lock().await;
        if let Some(b) = buckets.get_mut(&(subscription.to_string(), read, 0)) {
            b.tokens = b.tokens.min(remaining);
        }
    }

    /// Holds every request of the subscription back until `until` (after a 429).
    pub async fn pause(&self, subscription: &str, read: bool, until: Instant) {
        let shape = self.shape(read);
        let mut buckets = self.buckets.lock().await;
        let b = buckets
            .entry((subscription.to_string(), read, 0))
            .or_insert(Bucket {
                tokens: 0.0,
                last: Instant::now(),
                paused_until: None,
            });
        b.tokens = b.tokens.min(shape.capacity).min(0.0);
        b.paused_until = Some(b.paused_until.map_or(until, |u| u.max(until)));
    }
}

/// How long past its refill an empty bucket is waited on. ARM counts a request when it
/// arrives, a little after the client took its token, and the first request of a burst (a new
/// connection) arrives later than the ones after it: waiting exactly for the refill let the
/// next request reach ARM a few milliseconds before ARM's bucket had refilled (a 429 in one
/// run of ten on a busy machine, once connections were kept).
const REFILL_SLACK: Duration = Duration::from_millis(50);

/// The policy itself; installed as the client's per-retry policy.
#[derive(Debug)]
pub struct ArmPolicy {
    pub limiter: Arc<RateLimiter>,
    pub metrics: Arc<ArmMetrics>,
    pub retry: RetrySettings,
    /// Caps requests in flight across all subscriptions (a permit per attempt, not held while
    /// waiting for a token, a retry or a long-running operation).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Full error bodies of the client's raw requests, by their `x-ms-client-request-id`
    /// ([`ERROR_BODY_PREFIX`]): azure_core turns an error response into an `HttpError` that keeps
    /// only the code and message, and `error.additionalInfo` (which Azure Policy assignment
    /// denied a write) is needed to tell the user what to do.
    pub error_bodies: Arc<std::sync::Mutex<HashMap<String, Vec<u8>>>>,
    /// The token every attempt carries (taken anew per attempt: a retry after a long wait
    /// does not carry a token that expired meanwhile).
    pub credentials: Arc<Credentials>,
    pub scopes: Vec<String>,
    /// The ARM endpoint's origin (scheme, host, port): the only one a request may go to, so
    /// the only one the token goes to. Whatever a response points at (a `nextLink` of any
    /// listing, `Azure-AsyncOperation`, `Location`) is held to it here, once for every call.
    pub origin: url::Origin,
}

/// The error code of a request refused because its URL left the ARM endpoint's origin.
pub const FOREIGN_ORIGIN: &str = "ForeignOrigin";

/// A request whose URL is not on the ARM endpoint's origin: refused before any token is
/// attached or anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refused to send a request with the ARM token to {host}: {url} is not on the ARM endpoint {arm} (a nextLink, Azure-AsyncOperation or Location header pointed there)"
)]
pub struct ForeignOrigin {
    /// The host (and port) the URL named.
    pub host: String,
    /// The URL without its query.
    pub url: String,
    /// The ARM endpoint's origin.
    pub arm: String,
}

impl ForeignOrigin {
    /// `Some` when `url` is off `origin`.
    pub fn check(url: &url::Url, origin: &url::Origin) -> Option<ForeignOrigin> {
        if &url.origin() == origin {
            return None;
        }
        let mut bare = url.clone();
        bare.set_query(None);
        bare.set_fragment(None);
        Some(ForeignOrigin {
            host: match (url.host_str(), url.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                (None, _) => url.scheme().to_string(),
            },
            url: bare.to_string(),
            arm: origin.ascii_serialization(),
        })
    }
}

/// ARM's codes for a bearer token it no longer accepts: one fresh token and one retry.
pub fn token_refused(status: u16, code: &str) -> bool {
    status == 401
        && matches!(
            code,
            "ExpiredAuthenticationToken" | "InvalidAuthenticationToken"
        )
}

/// Request IDs starting with this have their error bodies kept in [`ArmPolicy::error_bodies`].
pub const ERROR_BODY_PREFIX: &str = "kmsroute-";

/// `subscriptions/{id}` from a request path (lower-cased), or "" for other URLs.
pub fn subscription_of(path: &str) -> String {
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    while let Some(s) = segs.next() {
        if s.eq_ignore_ascii_case("subscriptions") {
            return segs.next().unwrap_or_default().to_ascii_lowercase();
        }
    }
    String::new()
}

/// A metrics label for a request: method and the last resource type in the path.
pub fn operation_label(method: &str, path: &str) -> String {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let kind = if segs
        .iter()
        .any(|s| s.eq_ignore_ascii_case("operations") || s.eq_ignore_ascii_case("operationResults"))
    {
        "operation"
    } else if segs
        .last()
        .is_some_and(|s| s.eq_ignore_ascii_case("descendants"))
    {
        "descendants"
    } else if segs
        .iter()
        .any(|s| s.eq_ignore_ascii_case("microsoft.insights"))
    {
        "activityLog"
    } else {
        // Types sit at odd positions after the provider namespace; take the last type name.
        let provider = segs
            .iter()
            .position(|s| s.eq_ignore_ascii_case("Microsoft.Network"));
        match provider {
            Some(p) => {
                let rest = &segs[p + 1..];
                let idx = if rest.len().is_multiple_of(2) {
                    rest.len().saturating_sub(2)
                } else {
                    rest.len() - 1
                };
                rest.get(idx).copied().unwrap_or("unknown")
            }
            None => "unknown",
        }
    };
    format!("{method} {kind}")
}

/// An error and its sources, outermost first ("failed to execute request: error sending
/// request: connection refused"), without repeats.
pub fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get_optional_str(&azure_core::headers::RETRY_AFTER)?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn backoff(settings: &RetrySettings, attempt: u32) -> Duration {
    let exp = settings
        .base_delay
        .saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let capped = exp.min(settings.max_delay);
    // Full jitter in [capped/2, capped].
    let jitter = rand::random::<f64>() * 0.5 + 0.5;
    capped.mul_f64(jitter)
}

impl ArmPolicy {
    /// Keeps the body of a failed raw request (see [`ArmPolicy::error_bodies`]).
    async fn keep_error_body(
        &self,
        request: &Request,
        resp: Response,
    ) -> azure_core::Result<Response> {
        let id = request
            .headers()
            .get_optional_str(&azure_core::headers::CLIENT_REQUEST_ID)
            .filter(|id| id.starts_with(ERROR_BODY_PREFIX))
            .map(str::to_string);
        let Some(id) = id.filter(|_| !resp.status().is_success()) else {
            return Ok(resp);
        };
        let (status, headers, body) = resp.deconstruct();
        let bytes = body.collect().await?;
        if let Ok(mut kept) = self.error_bodies.lock() {
            kept.insert(id, bytes.to_vec());
        }
        Ok(Response::new(
            status,
            headers,
            Box::pin(azure_core::BytesStream::new(bytes)),
        ))
    }
}

tokio::task_local! {
    /// Set by the client when it took this write's token before building the request (see
    /// `AzureNetworkApi::paced`): the first attempt of the next write in the task uses it.
    pub static PREPAID_WRITE: std::cell::Cell<bool>;
}

#[async_trait::async_trait]
impl Policy for ArmPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        // Where the token may go: the ARM endpoint's origin and nowhere else.
        if let Some(foreign) = ForeignOrigin::check(request.url(), &self.origin) {
            tracing::warn!(host = %foreign.host, "{foreign}");
            return Err(azure_core::Error::new(
                azure_core::error::ErrorKind::Other,
                foreign,
            ));
        }
        let path = request.url().path().to_string();
        let method = request.method().to_string();
        let read = method.eq_ignore_ascii_case("GET");
        let call = Call {
            subscription: subscription_of(&path),
            label: operation_label(&method, &path),
            read,
            start: Instant::now(),
        };
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        // The identity routed to the request's subscription or management group.
        let credential = self.credentials.for_path(&path);
        let mut token = credential.get_token(&scopes).await?.token;
        let mut reauthenticated = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if attempt > 1 && !reauthenticated {
                token = credential.get_token(&scopes).await?.token;
            }
            request.insert_header(
                azure_core::headers::AUTHORIZATION,
                format!("Bearer {}", token.secret()),
            );
            let prepaid = attempt == 1
                && !read
                && PREPAID_WRITE
                    .try_with(|p| p.replace(false))
                    .unwrap_or(false);
            if !prepaid {
                self.limiter.acquire(&call.subscription, read).await;
            }
            // The semaphore is never closed; a closed one would only mean "no cap".
            let permit = self.in_flight.acquire().await.ok();
            let t0 = Instant::now();
            let outcome =
                tokio::time::timeout(self.retry.timeout, next[0].send(ctx, request, &next[1..]))
                    .await;
            drop(permit);
            let step = match outcome {
                Err(_elapsed) => {
                    self.metrics.record(&call.label, "timeout", t0.elapsed());
                    self.timed_out(&call, attempt)
                }
                Ok(Err(e)) => {
                    self.metrics.record(&call.label, "error", t0.elapsed());
                    self.unreachable(&call, attempt, request, &e)
                }
                Ok(Ok(resp)) => {
                    let status = u16::from(resp.status()).to_string();
                    self.metrics.record(&call.label, &status, t0.elapsed());
                    self.observe_remaining(&resp, &call.subscription, read)
                        .await;
                    if resp.status() == StatusCode::Unauthorized && !reauthenticated {
                        let (rebuilt, code) = with_error_code(resp).await?;
                        if token_refused(401, &code) {
                            // One fresh token, one retry: not a failed pass.
                            reauthenticated = true;
                            tracing::info!(operation = %call.label, code, "ARM refused the access token; retrying once with a fresh one");
                            token = credential
                                .refresh_after(&scopes, token.secret())
                                .await?
                                .token;
                            continue;
                        }
                        self.answered(&call, attempt, request, rebuilt).await
                    } else {
                        self.answered(&call, attempt, request, resp).await
                    }
                }
            };
            match step {
                Step::Done(result) => return result,
                Step::Retry(delay) => tokio::time::sleep(delay).await,
            }
        }
    }
}

/// The request [`ArmPolicy::send`] is sending, across its attempts.
struct Call {
    subscription: String,
    /// The operation, for metrics and logs (`GET routeTables`).
    label: String,
    read: bool,
    start: Instant,
}

/// What to do after an attempt.
enum Step {
    /// Wait this long, then send again.
    Retry(Duration),
    Done(PolicyResult),
}

impl ArmPolicy {
    /// Whether another attempt, `delay` from now, stays within the retry budget.
    fn may_retry(&self, call: &Call, attempt: u32, delay: Duration) -> bool {
        attempt < self.retry.max_attempts && call.start.elapsed() + delay <= self.retry.max_elapsed
    }

    fn timed_out(&self, call: &Call, attempt: u32) -> Step {
        let delay = backoff(&self.retry, attempt);
        if self.may_retry(call, attempt, delay) {
            tracing::warn!(operation = %call.label, attempt, "ARM request timed out; retrying");
            return Step::Retry(delay);
        }
        Step::Done(Err(azure_core::Error::message(
            azure_core::error::ErrorKind::Io,
            format!(
                "ARM request {} timed out after {:?}",
                call.label, self.retry.timeout
            ),
        )))
    }

    /// The request got no answer: ARM could not be reached.
    fn unreachable(
        &self,
        call: &Call,
        attempt: u32,
        request: &Request,
        e: &azure_core::Error,
    ) -> Step {
        let delay = backoff(&self.retry, attempt);
        let cause = cause_chain(e);
        let url = request.url();
        // Cannot connect at all (refused, DNS, TLS, proxy): a short, visible budget, not the
        // minutes a throttled ARM deserves.
        if *e.kind() == azure_core::error::ErrorKind::Io
            && attempt < self.retry.connect_attempts
            && self.may_retry(call, attempt, delay)
        {
            tracing::warn!(
                "cannot reach {}: {cause}; retry {attempt} of {} in {delay:.1?}",
                url.origin().ascii_serialization(),
                self.retry.connect_attempts - 1
            );
            return Step::Retry(delay);
        }
        Step::Done(Err(azure_core::Error::message(
            e.kind().clone(),
            format!(
                "cannot reach {} ({}): {cause}",
                url.as_str().split('?').next().unwrap_or_default(),
                call.label
            ),
        )))
    }

    /// ARM answered: success, an error to return, or a transient one to wait out.
    async fn answered(&self, call: &Call, attempt: u32, request: &Request, resp: Response) -> Step {
        let status = resp.status();
        if status.is_success() {
            return Step::Done(Ok(resp));
        }
        let transient = matches!(
            status,
            StatusCode::TooManyRequests
                | StatusCode::Conflict
                | StatusCode::InternalServerError
                | StatusCode::BadGateway
                | StatusCode::ServiceUnavailable
                | StatusCode::GatewayTimeout
        );
        if !transient {
            return Step::Done(self.keep_error_body(request, resp).await);
        }
        // Read the body to tell retryable 409/429s from the rest, then rebuild the response.
        let hinted = retry_after(&resp);
        let (rebuilt, code) = match with_error_code(resp).await {
            Ok(read) => read,
            Err(e) => return Step::Done(Err(e)),
        };
        let retryable = match status {
            StatusCode::Conflict => code == "AnotherOperationInProgress",
            _ => true,
        };
        let delay = hinted.unwrap_or_else(|| backoff(&self.retry, attempt));
        // The Network RP's "another operation is updating this VNet" is a 429 too, but no
        // throttling: only real throttling pauses the subscription.
        if status == StatusCode::TooManyRequests
            && code != "RetryableError"
            && code != "RetryableErrorDueToAnotherOperation"
        {
            self.limiter
                .pause(&call.subscription, call.read, Instant::now() + delay)
                .await;
        }
        if !retryable || !self.may_retry(call, attempt, delay) {
            return Step::Done(self.keep_error_body(request, rebuilt).await);
        }
        tracing::debug!(operation = %call.label, status = u16::from(status), code, attempt, ?delay, "retrying ARM request");
        Step::Retry(delay)
    }
}

impl ArmPolicy {
    /// What ARM says is left of the subscription's budget
    /// (`x-ms-ratelimit-remaining-subscription-{reads,writes}`): the limiter follows it and the
    /// metrics show it.
    async fn observe_remaining(&self, resp: &Response, subscription: &str, read: bool) {
        let header = if read {
            "x-ms-ratelimit-remaining-subscription-reads"
        } else {
            "x-ms-ratelimit-remaining-subscription-writes"
        };
        if let Some(remaining) = resp
            .headers()
            .get_optional_str(&azure_core::headers::HeaderName::from_static(header))
            .and_then(|v| v.parse::<f64>().ok())
        {
            self.limiter
                .observe_remaining(subscription, read, remaining)
                .await;
            self.metrics.remaining(subscription, read, remaining);
        }
    }
}

/// The response as it was (its body read into memory) and ARM's `error.code` in it ("" when
/// there is none).
async fn with_error_code(resp: Response) -> Result<(Response, String), azure_core::Error> {
    let (status, headers, body) = resp.deconstruct();
    let bytes = body.collect().await?;
    let code = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/error/code")
                .and_then(|c| c.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let rebuilt = Response::new(
        status,
        headers,
        Box::pin(azure_core::BytesStream::new(bytes)),
    );
    Ok((rebuilt, code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_resource_type() {
        let p = "/subscriptions/S/resourceGroups/rg/providers/Microsoft.Network/routeTables/rt/routes/r1";
        assert_eq!(operation_label("PUT", p), "PUT routes");
        assert_eq!(
            operation_label(
                "GET",
                "/subscriptions/S/providers/Microsoft.Network/routeTables"
            ),
            "GET routeTables"
        );
        assert_eq!(
            operation_label(
                "GET",
                "/subscriptions/S/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
            ),
            "GET subnets"
        );
        assert_eq!(subscription_of(p), "s");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = RetrySettings {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetrySettings::default()
        };
        assert!(backoff(&s, 1) <= Duration::from_millis(200));
        assert!(backoff(&s, 10) <= Duration::from_secs(1));
        assert!(backoff(&s, 10) >= Duration::from_millis(500));
    }
}
