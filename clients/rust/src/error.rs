//! Errors: what the agent answered (its status, code and message), or why
//! it could not be asked.

use std::path::PathBuf;

/// An error answer from the agent: `{"error": {"code": …, "message": …}}`
/// with its HTTP status (docs/DESIGN.md, "Socket API").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The HTTP status.
    pub status: u16,
    /// The agent's error code (`unknown_tenant`, `not_ready`, …; empty if
    /// the body was not the agent's error JSON).
    pub code: String,
    /// The agent's message, meant for a person.
    pub message: String,
}

impl Answered {
    /// Reads an error answer's body; a body that is not the agent's error
    /// JSON is kept as the message.
    pub(crate) fn parse(status: u16, body: &[u8]) -> Self {
        let parsed: Option<(String, String)> = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                let e = v.get("error")?;
                Some((
                    e.get("code")?.as_str()?.to_owned(),
                    e.get("message")?.as_str()?.to_owned(),
                ))
            });
        let (code, message) =
            parsed.unwrap_or_else(|| (String::new(), String::from_utf8_lossy(body).into_owned()));
        Self {
            status,
            code,
            message,
        }
    }
}

impl std::fmt::Display for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, HTTP {})", self.message, self.code, self.status)
    }
}

/// Why a lookup failed. Match on the variant; each answer variant carries
/// the agent's code and message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 404: no such tenant, number or endpoint (there is no default tenant).
    #[error("not found: {0}")]
    NotFound(Answered),
    /// 400: the id, number or snapshot is not one (`bad_tenant_id`, …).
    #[error("bad request: {0}")]
    BadRequest(Answered),
    /// 503: the agent serves no verified snapshot yet.
    #[error("agent not ready: {0}")]
    NotReady(Answered),
    /// 410: the snapshot asked for is not retained (or no longer trusted).
    #[error("snapshot gone: {0}")]
    SnapshotGone(Answered),
    /// Any other error answer.
    #[error("agent error: {0}")]
    Other(Answered),
    /// The socket is missing, refused the connection, or did not answer in
    /// time: the agent is not running (or is overloaded). Check
    /// `systemctl status strata-agent` and the socket path.
    #[error("the Strata agent at {} is unavailable: {source}", socket.display())]
    Unavailable {
        /// The socket asked.
        socket: PathBuf,
        /// What went wrong on the way.
        #[source]
        source: std::io::Error,
    },
    /// A 200 answer that is not what the API promises (not JSON, a route
    /// without `tenant_id`): the agent and this client disagree on the API.
    #[error("the agent's answer to {path} is not what the API promises: {reason}")]
    Invalid {
        /// The request path.
        path: String,
        /// What is wrong with the answer.
        reason: String,
    },
}

impl Error {
    /// The typed error for an error answer.
    pub(crate) fn answered(status: u16, body: &[u8]) -> Self {
        let a = Answered::parse(status, body);
        match status {
            400 => Error::BadRequest(a),
            404 => Error::NotFound(a),
            410 => Error::SnapshotGone(a),
            503 => Error::NotReady(a),
            _ => Error::Other(a),
        }
    }

    /// The agent's answer, when it answered.
    pub fn answer(&self) -> Option<&Answered> {
        match self {
            Error::NotFound(a)
            | Error::BadRequest(a)
            | Error::NotReady(a)
            | Error::SnapshotGone(a)
            | Error::Other(a) => Some(a),
            Error::Unavailable { .. } | Error::Invalid { .. } => None,
        }
    }

    /// The agent's error code (`unknown_tenant`, …), when it answered.
    pub fn code(&self) -> Option<&str> {
        self.answer().map(|a| a.code.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_typed_by_status_and_keep_code_and_message() {
        let e = Error::answered(
            404,
            br#"{"error":{"code":"unknown_tenant","message":"no tenant x"}}"#,
        );
        assert!(matches!(e, Error::NotFound(_)));
        assert_eq!(e.code(), Some("unknown_tenant"));
        assert!(e.to_string().contains("no tenant x"));
        let e = Error::answered(502, b"bad gateway");
        assert_eq!(e.code(), Some(""));
        assert_eq!(e.answer().map(|a| a.message.as_str()), Some("bad gateway"));
    }
}
