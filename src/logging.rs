//! What the logs may never print, whatever `RUST_LOG` says. Two guards, neither of which a
//! filter directive can undo:
//!
//! - [`sdk_cap`], a filter every log line must pass *besides* the `RUST_LOG` filter (an AND, not
//!   another directive a more specific one outranks): the Azure SDK crates never log below
//!   `info`. azure_core 0.21 logs each request at debug with a `Headers` Debug that redacts
//!   every header but `authorization`; the GA line's pipeline logs at debug too.
//! - [`Redacting`], the writer every formatted line goes through: a bearer token, anything
//!   shaped like a JWT, and the secret fields of a token request are replaced before a byte
//!   reaches stderr, so a secret some other crate formats (at any level, from any target) is
//!   still not printed.

use regex::Regex;
use std::borrow::Cow;
use std::io::Write;
use std::sync::OnceLock;
use tracing::Level;

/// The crates whose request logging carries headers: capped at `info`.
pub const SDK_TARGETS: &[&str] = &[
    "azure_core",
    "azure_identity",
    "azure_mgmt_network",
    "typespec",
    "typespec_client_core",
];

/// Whether a log line of `target` at `level` may be written at all (see [`SDK_TARGETS`]).
pub fn sdk_cap(target: &str, level: &Level) -> bool {
    let sdk = SDK_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    });
    !sdk || *level <= Level::INFO
}

fn patterns() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(concat!(
            // `Bearer <token>` in any case, as a header value or a Debug of one.
            r"((?i:bearer)\s+)[^\s\x22\\',;)\]}]+",
            // A JWT (header.payload[.signature]): every Entra token and projected token.
            r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)?",
            // The secret fields of an OAuth token request or answer.
            r"|((?:client_secret|client_assertion|access_token|refresh_token)[\x22']?\s*[=:]\s*[\x22']?)[^\s\x22\\'&,}]+",
        ))
        .ok()
    })
    .as_ref()
}

/// `line` with every secret it shows replaced by `[redacted]` (the whole line withheld if the
/// patterns could not be built; the unit tests build them).
pub fn redact(line: &str) -> Cow<'_, str> {
    let Some(re) = patterns() else {
        return Cow::Borrowed("[log line withheld: its redaction is unavailable]\n");
    };
    re.replace_all(line, |c: &regex::Captures| {
        let keep = c.get(1).or_else(|| c.get(2)).map_or("", |m| m.as_str());
        format!("{keep}[redacted]")
    })
}

/// A `MakeWriter` whose writers redact each formatted line (tracing-subscriber's formatter
/// writes an event with one `write_all` of the whole line) before it reaches `inner`.
#[derive(Debug, Clone, Copy)]
pub struct Redacting<M>(pub M);

/// One event's writer (see [`Redacting`]).
pub struct RedactingWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let text = String::from_utf8_lossy(&self.buf);
            self.inner.write_all(redact(&text).as_bytes())?;
            self.buf.clear();
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for Redacting<M>
{
    type Writer = RedactingWriter<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.0.make_writer(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patterns_build_and_keep_json_lines_whole() {
        assert!(patterns().is_some());
        let json = r#"{"message":"headers {\"authorization\": \"Bearer s3cret\"}"}"#;
        let out = redact(json);
        assert_eq!(
            out,
            r#"{"message":"headers {\"authorization\": \"Bearer [redacted]\"}"}"#
        );
    }

    #[test]
    fn bearer_tokens_jwts_and_token_request_secrets_are_redacted() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        for (line, secret) in [
            (
                "Headers({\"authorization\": \"Bearer s3cret-7f3a\"})".to_string(),
                "s3cret-7f3a",
            ),
            (
                "authorization: bearer abc.def-123".to_string(),
                "abc.def-123",
            ),
            (format!("token {jwt} in a Debug"), "c2lnbmF0dXJl"),
            (format!("unsigned {}.", &jwt[..36]), "eyJzdWIiOiJ4In0"),
            (
                "body: client_assertion=abc123&client_secret=Zx8Q~s".to_string(),
                "Zx8Q~s",
            ),
            (
                "{\"access_token\":\"opaque-token-1\",\"expires_in\":3599}".to_string(),
                "opaque-token-1",
            ),
        ] {
            let out = redact(&line);
            assert!(!out.contains(secret), "{secret} survived in {out}");
            assert!(out.contains("[redacted]"), "{out}");
        }
        let plain = "GET routeTables 200 in 3 ms (subscription 1111)";
        assert_eq!(redact(plain), plain);
        assert!(redact("client_assertion=abc123").contains("client_assertion=[redacted]"));
    }

    #[test]
    fn the_sdk_crates_are_capped_at_info_and_nothing_else_is() {
        for target in [
            "azure_core",
            "azure_core::policies::transport",
            "typespec_client_core::http::policies::logging",
            "azure_identity",
        ] {
            assert!(!sdk_cap(target, &Level::DEBUG), "{target}");
            assert!(!sdk_cap(target, &Level::TRACE), "{target}");
            assert!(sdk_cap(target, &Level::INFO), "{target}");
        }
        for target in [
            "kmsroute::controller",
            "azure_core_extra",
            "hyper",
            "reqwest",
        ] {
            assert!(sdk_cap(target, &Level::TRACE), "{target}");
        }
    }

    #[test]
    fn a_line_written_in_pieces_is_redacted_whole() {
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter {
                inner: &mut out,
                buf: Vec::new(),
            };
            w.write_all(b"authorization: Bea").unwrap();
            w.write_all(b"rer s3cret\n").unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "authorization: Bearer [redacted]\n");
    }
}
