//! Workload identity's client assertion: the projected service-account token, read from its
//! file at every token request.
//!
//! kubelet replaces the projected token before it expires (at 80 % of its lifetime) by writing a
//! new timestamped directory and swapping the `..data` symlink the visible `token` path goes
//! through. Opening the path again follows the new link; a copy held in memory does not. The GA
//! library's own `WorkloadIdentityCredential` keeps its copy for 10 minutes, longer than a
//! short-lived projected token lives, so kmsroute supplies the assertion itself: a token request
//! is rare (about one an hour per identity), and reading a small file for it costs nothing.
//!
//! An assertion whose `exp` has passed is never presented (Entra ID would refuse it with
//! AADSTS700024): the file is read again for a short while in case kubelet is swapping it, then
//! the request fails naming the file and the expiry.

use super::jwt;
use azure_core_ga::http::ClientMethodOptions;
use azure_identity::ClientAssertion;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// What the last assertion presented said of itself: named in AADSTS70021's explanation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presented {
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub expires: Option<i64>,
}

/// The projected token file (`AZURE_FEDERATED_TOKEN_FILE`).
#[derive(Debug, Clone)]
pub struct ProjectedToken {
    path: PathBuf,
    /// How long to keep re-reading a file whose token has expired before giving up.
    patience: Duration,
    last: Arc<Mutex<Option<Presented>>>,
}

/// Why the file gave no assertion worth presenting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error(
        "cannot read the service-account token file {path}: {reason} (workload identity: is the \
         pod labelled azure.workload.identity/use=true and its ServiceAccount annotated with \
         azure.workload.identity/client-id?)"
    )]
    Unreadable { path: String, reason: String },
    #[error(
        "the service-account token file {path} does not hold a JWT: {reason} (AADSTS50027 if it \
         were sent)"
    )]
    NotAJwt { path: String, reason: String },
    #[error(
        "the service-account token in {path} expired at {expired} and has not been replaced: \
         kubelet refreshes projected tokens at 80 % of their lifetime, so check the node's \
         kubelet and clock (not presented to Entra ID, which would refuse it with AADSTS700024)"
    )]
    Expired { path: String, expired: String },
}

/// Whether an assertion with this `exp` may still be presented at `now` (Unix seconds).
pub fn presentable(expires: Option<i64>, now: i64) -> bool {
    expires.is_none_or(|exp| exp > now)
}

impl ProjectedToken {
    pub fn new(path: impl Into<PathBuf>) -> ProjectedToken {
        ProjectedToken {
            path: path.into(),
            patience: Duration::from_secs(5),
            last: Arc::default(),
        }
    }

    /// What the last assertion presented said of itself (shared with the credential's errors).
    pub fn presented(&self) -> Arc<Mutex<Option<Presented>>> {
        self.last.clone()
    }

    /// Reads the file now, through its symlinks.
    fn read(&self) -> Result<(String, Presented), AssertionError> {
        let path = self.path.display().to_string();
        let text = std::fs::read_to_string(&self.path).map_err(|e| AssertionError::Unreadable {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let token = text.trim().to_string();
        let claims = jwt::claims(&token).map_err(|e| AssertionError::NotAJwt {
            path,
            reason: e.to_string(),
        })?;
        Ok((
            token,
            Presented {
                issuer: claims.issuer,
                subject: claims.subject,
                expires: claims.expires,
            },
        ))
    }

    /// The freshest assertion the file holds, never an expired one.
    pub async fn current(&self) -> Result<String, AssertionError> {
        let started = std::time::Instant::now();
        loop {
            let (token, presented) = self.read()?;
            let now = OffsetDateTime::now_utc().unix_timestamp();
            if presentable(presented.expires, now) {
                if let Ok(mut last) = self.last.lock() {
                    *last = Some(presented);
                }
                return Ok(token);
            }
            if started.elapsed() >= self.patience {
                let expired = presented
                    .expires
                    .and_then(|e| OffsetDateTime::from_unix_timestamp(e).ok())
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                return Err(AssertionError::Expired {
                    path: self.path.display().to_string(),
                    expired,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[async_trait::async_trait]
impl ClientAssertion for ProjectedToken {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core_ga::Result<String> {
        self.current().await.map_err(|e| {
            azure_core_ga::Error::with_error(
                azure_core_ga::error::ErrorKind::Credential,
                e.clone(),
                e.to_string(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(exp: i64) -> String {
        jwt::unsigned(
            &json!({"iss": "https://issuer", "sub": "system:serviceaccount:a:b",
            "aud": "api://AzureADTokenExchange", "exp": exp}),
        )
    }

    #[test]
    fn an_expired_assertion_is_not_presentable() {
        assert!(presentable(Some(101), 100));
        assert!(!presentable(Some(100), 100));
        assert!(!presentable(Some(50), 100));
        assert!(presentable(None, 100));
    }

    /// kubelet's layout: `token -> ..data/token`, `..data -> ..<timestamp>`; an update writes a
    /// new directory and swaps `..data`. Each read follows the link as it is now.
    #[tokio::test]
    async fn each_read_follows_kubelets_symlinks_to_the_newest_token() {
        let dir = std::env::temp_dir().join(format!("kmsroute-pt-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let write = |n: u32, exp: i64| {
            let d = dir.join(format!("..2026_{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("token"), token(exp)).unwrap();
            let tmp = dir.join("..data_tmp");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(format!("..2026_{n}"), &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("..data")).unwrap();
        };
        write(1, now + 100);
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        let pt = ProjectedToken::new(dir.join("token"));
        let first = pt.current().await.unwrap();
        write(2, now + 200);
        std::fs::remove_dir_all(dir.join("..2026_1")).unwrap();
        let second = pt.current().await.unwrap();
        assert_ne!(first, second);
        assert_eq!(jwt::claims(&second).unwrap().expires, Some(now + 200));
        let seen = pt.presented().lock().unwrap().clone().unwrap();
        assert_eq!(seen.subject.as_deref(), Some("system:serviceaccount:a:b"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_expired_file_is_named_and_never_presented() {
        let dir = std::env::temp_dir().join(format!("kmsroute-pt-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, token(1_000)).unwrap();
        let mut pt = ProjectedToken::new(&path);
        pt.patience = Duration::from_millis(250);
        let e = pt.current().await.unwrap_err();
        assert!(matches!(e, AssertionError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("AADSTS700024"), "{e}");
        assert!(pt.presented().lock().unwrap().is_none());
        // Replaced while waiting: the new one is presented.
        let now = OffsetDateTime::now_utc().unix_timestamp();
        pt.patience = Duration::from_secs(5);
        let replace = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                std::fs::write(&path, token(now + 60)).unwrap();
            })
        };
        let t = pt.current().await.unwrap();
        replace.await.unwrap();
        assert_eq!(jwt::claims(&t).unwrap().expires, Some(now + 60));
        std::fs::write(&path, "not a token").unwrap();
        assert!(matches!(
            pt.current().await,
            Err(AssertionError::NotAJwt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            pt.current().await,
            Err(AssertionError::Unreadable { .. })
        ));
    }
}
