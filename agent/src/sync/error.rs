//! Why a check applied nothing, as the agent sees it: the verifier's
//! [`Refusal`], or what only a node can fail at (its local pin file, its
//! snapshot file). The agent's retry policy lives here: whether to back
//! off, and whether the same documents would be refused again.

use strata_common::bundle::BundleError;
use strata_common::bundle::tree::TreeError;
use strata_common::verify::{Refusal, Severity};

use crate::db::DbError;

/// Why a check applied nothing.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The store or what it offers was refused by the verification
    /// pipeline.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The local pin file cannot be read or does not hold a version.
    #[error("{path}: {reason}; write one snapshot version (such as `42`) or remove the file")]
    LocalPin {
        /// The pin file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The verified snapshot could not be stored in the snapshot file.
    #[error("{bundle}: {source}; the previous snapshot stays served")]
    Ingest {
        /// The bundle's key.
        bundle: String,
        /// The database's error.
        source: DbError,
        /// Whether storing this same bundle again would fail the same way
        /// (its version is already stored, or older than the stored one),
        /// as opposed to a disk that may have room at the next try.
        permanent: bool,
    },
    /// The snapshot file cannot take a snapshot now (closed after an I/O
    /// error, or on a full or read-only disk): nothing new is applied
    /// until it can. Reported as `ingest`.
    #[error("{path}: {reason}")]
    LocalStore {
        /// The local file.
        path: String,
        /// Why, and what to do.
        reason: String,
    },
}

impl CheckError {
    /// The short reason: the metrics label and the `/v1/snapshot` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            CheckError::Refused(r) => r.reason(),
            CheckError::LocalPin { .. } => "local_pin",
            CheckError::Ingest { .. } | CheckError::LocalStore { .. } => "ingest",
        }
    }

    /// Whether the node is stale (nothing to verify, or a local failure to
    /// retry) or degraded (the signed inputs, or the node's own pin file,
    /// were refused).
    pub fn severity(&self) -> Severity {
        match self {
            CheckError::Refused(r) => r.severity(),
            CheckError::LocalPin { .. }
            | CheckError::Ingest {
                permanent: true, ..
            } => Severity::Refused,
            CheckError::Ingest {
                permanent: false, ..
            }
            | CheckError::LocalStore { .. } => Severity::Unavailable,
        }
    }

    /// Whether the next check should wait longer than the poll interval: the
    /// store or the local disk failed, or the bundle was not (yet) the one
    /// the pointer names, and trying at once would only fail again (an
    /// empty store or an expired pointer is polled as usual).
    pub fn backs_off(&self) -> bool {
        matches!(
            self,
            CheckError::Refused(Refusal::BundleHash { .. } | Refusal::BundleMissing { .. })
        ) || (self.severity() == Severity::Unavailable
            && !matches!(
                self,
                CheckError::Refused(Refusal::StoreEmpty { .. } | Refusal::PointerExpired { .. })
            ))
    }

    /// Whether the same documents will always be refused the same way, so
    /// that the bundle need not be fetched again until they change: what
    /// the signed documents decide. A bundle whose bytes are not the
    /// pointer's (a mirror caught mid-copy, an upload still under way) may
    /// be right at the next try, and is fetched again, backing off; a pin
    /// file or a clock can be mended without the documents changing.
    ///
    /// Format 3 objects likewise: an object whose bytes are not the ones
    /// its signed parent names may be repaired in the store (or finish
    /// copying to a mirror) without the documents changing.
    pub fn is_final(&self) -> bool {
        self.severity() == Severity::Refused
            && !matches!(
                self,
                CheckError::Refused(
                    Refusal::BundleHash { .. }
                        | Refusal::BundleMissing { .. }
                        | Refusal::SignedInFuture { .. }
                        | Refusal::Bundle {
                            source: BundleError::Object(
                                TreeError::HashMismatch { .. } | TreeError::SizeMismatch { .. }
                            ),
                            ..
                        }
                ) | CheckError::LocalPin { .. }
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_common::bundle::BundleError;
    use strata_common::pointer::PointerError;
    use strata_common::store::StoreError;

    fn unreachable() -> CheckError {
        CheckError::Refused(Refusal::StoreUnreachable {
            store: "s3://b/p".into(),
            source: StoreError::Transient {
                key: "channels/stable.json".into(),
                source: "connection refused".into(),
            },
        })
    }

    fn bad_signature() -> CheckError {
        CheckError::Refused(Refusal::Pointer {
            key: "channels/stable.json".into(),
            source: PointerError::Malformed("no".into()),
        })
    }

    #[test]
    fn a_failing_store_or_disk_backs_off_and_is_tried_again() {
        for e in [
            unreachable(),
            CheckError::LocalStore {
                path: "strata.redb".into(),
                reason: "full".into(),
            },
            CheckError::Refused(Refusal::Bundle {
                bundle: "snapshots/1".into(),
                source: BundleError::Io(std::io::Error::other("spool read")),
            }),
        ] {
            assert_eq!(e.severity(), Severity::Unavailable, "{e}");
            assert!(e.backs_off(), "{e}");
            assert!(!e.is_final(), "{e}");
        }
    }

    #[test]
    fn an_empty_store_or_an_expired_pointer_is_polled_as_usual() {
        for e in [
            CheckError::Refused(Refusal::StoreEmpty {
                store: "file:///s".into(),
                key: "channels/stable.json".into(),
            }),
            CheckError::Refused(Refusal::PointerExpired {
                key: "channels/stable.json".into(),
                expires_at: "2026-01-01T00:00:00Z".into(),
            }),
        ] {
            assert_eq!(e.severity(), Severity::Unavailable);
            assert!(!e.backs_off(), "{e}");
            assert!(!e.is_final(), "{e}");
        }
    }

    #[test]
    fn what_the_signed_documents_decide_is_not_fetched_again() {
        let e = bad_signature();
        assert_eq!(e.severity(), Severity::Refused);
        assert!(e.is_final());
        assert!(!e.backs_off());
        let older = CheckError::Refused(Refusal::OlderVersion {
            key: "channels/stable.json".into(),
            version: 3,
            served: 5,
        });
        assert!(older.is_final());
        assert_eq!(older.reason(), "older_version");
    }

    #[test]
    fn a_bundle_not_yet_the_pointers_is_fetched_again_backing_off() {
        for e in [
            CheckError::Refused(Refusal::BundleMissing {
                bundle: "snapshots/2".into(),
            }),
            CheckError::Refused(Refusal::BundleHash {
                bundle: "snapshots/2".into(),
                size: 1,
                sha256: String::new(),
                expected_size: 2,
                expected_sha256: "x".into(),
            }),
        ] {
            assert_eq!(e.severity(), Severity::Refused);
            assert!(e.backs_off(), "{e}");
            assert!(!e.is_final(), "{e}");
        }
    }

    #[test]
    fn a_local_pin_or_clock_can_be_mended_without_a_new_document() {
        let pin = CheckError::LocalPin {
            path: "/etc/strata/pin".into(),
            reason: "holds \"x\"".into(),
        };
        assert_eq!(pin.reason(), "local_pin");
        assert_eq!(pin.severity(), Severity::Refused);
        assert!(!pin.is_final());
        let future = CheckError::Refused(Refusal::SignedInFuture {
            key: "pins/eu.json".into(),
            created_at: "2099-01-01T00:00:00Z".into(),
        });
        assert!(!future.is_final());
    }

    #[test]
    fn a_version_already_stored_is_final_a_full_disk_is_not() {
        let permanent = CheckError::Ingest {
            bundle: "snapshots/2".into(),
            source: DbError::NoCurrent,
            permanent: true,
        };
        assert_eq!(permanent.reason(), "ingest");
        assert!(permanent.is_final());
        let transient = CheckError::Ingest {
            bundle: "snapshots/2".into(),
            source: DbError::NoCurrent,
            permanent: false,
        };
        assert!(transient.backs_off());
        assert!(!transient.is_final());
    }
}
