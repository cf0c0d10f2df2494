//! Store URLs, parsed once: `file:///abs/path`, `s3://bucket/prefix`,
//! `https://host/prefix`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local directory: the embedded default, no server needed.
    File(PathBuf),
    /// A bucket and a key prefix (without slashes at either end; may be empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix every key is under.
        prefix: String,
    },
    /// A read-only HTTPS mirror of the store layout (a CDN); the URL
    /// without a trailing slash.
    Https(String),
}

/// Why a store URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store URL {url:?}: {reason}")]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// What is wrong and what would be valid.
    pub reason: &'static str,
}

impl FromStr for StoreUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let err = |reason| UrlError {
            url: url.to_owned(),
            reason,
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(err(
                    "a file store's path must be absolute: file:///absolute/path",
                ));
            }
            return Ok(StoreUrl::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(err("no bucket: write s3://bucket/prefix"));
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        if let Some(rest) = url.strip_prefix("https://") {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(err("no host: write https://host/prefix"));
            }
            return Ok(StoreUrl::Https(url.trim_end_matches('/').to_owned()));
        }
        Err(err(
            "unknown scheme: write file:///absolute/path, s3://bucket/prefix or https://host/prefix",
        ))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File(path) => write!(f, "file://{}", path.display()),
            StoreUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StoreUrl::Https(url) => f.write_str(url),
        }
    }
}

/// Parsed where it is read (an agent's `source`), so a bad URL is an error
/// of the config file, with the key named.
impl serde::Serialize for StoreUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StoreUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scheme_parses_once_and_prints_back() {
        for (text, parsed) in [
            ("file:///srv/store", StoreUrl::File("/srv/store".into())),
            (
                "s3://configs/prod",
                StoreUrl::S3 {
                    bucket: "configs".into(),
                    prefix: "prod".into(),
                },
            ),
            (
                "s3://configs",
                StoreUrl::S3 {
                    bucket: "configs".into(),
                    prefix: String::new(),
                },
            ),
            (
                "https://cdn.example/strata",
                StoreUrl::Https("https://cdn.example/strata".into()),
            ),
        ] {
            let url: StoreUrl = text.parse().expect(text);
            assert_eq!(url, parsed);
            assert_eq!(url.to_string(), text);
        }
        for bad in [
            "file://relative",
            "s3:///prefix",
            "https://",
            "http://cdn",
            "/srv/store",
        ] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }
}
