//! A request path, parsed once into the endpoint it names: routing, the
//! lookup and the metrics label all match on the one [`Endpoint`].

/// Every endpoint label, in a fixed order: [`Endpoint::index`] indexes it,
/// and `/metrics` labels requests with it (one of a fixed set, never an id).
pub const LABELS: [&str; 11] = [
    "tenant",
    "prompt",
    "route",
    "layer1",
    "snapshot",
    "snapshots",
    "healthz",
    "readyz",
    "metrics",
    "other",
    "check",
];

/// What a request path names, with the id or number it carries (not yet
/// checked: the handler checks it and answers 400 if it is not one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `/v1/tenants/{id}`: the effective config.
    Tenant(&'a str),
    /// `/v1/tenants/{id}/prompt`: the system prompt.
    Prompt(&'a str),
    /// `/v1/routes/{e164}`: the tenant owning a number (still
    /// percent-encoded).
    Route(&'a str),
    /// `/v1/layer1`.
    Layer1,
    /// `/v1/snapshot`: what is served and the agent's state.
    Snapshot,
    /// `/v1/snapshots`: the retained versions.
    Snapshots,
    /// `POST /v1/check`: check the store now.
    Check,
    /// `/healthz`.
    Healthz,
    /// `/readyz`.
    Readyz,
    /// `/metrics`.
    Metrics,
    /// Anything else: 404.
    Other,
}

impl<'a> Endpoint<'a> {
    /// The endpoint `path` names.
    pub fn parse(path: &'a str) -> Self {
        if let Some(rest) = path.strip_prefix("/v1/") {
            if let Some(tenant) = rest.strip_prefix("tenants/") {
                return match tenant.strip_suffix("/prompt") {
                    Some(id) => Endpoint::Prompt(id),
                    None => Endpoint::Tenant(tenant),
                };
            }
            if let Some(number) = rest.strip_prefix("routes/") {
                return Endpoint::Route(number);
            }
            return match rest {
                "layer1" => Endpoint::Layer1,
                "snapshot" => Endpoint::Snapshot,
                "snapshots" => Endpoint::Snapshots,
                "check" => Endpoint::Check,
                _ => Endpoint::Other,
            };
        }
        match path {
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/metrics" => Endpoint::Metrics,
            _ => Endpoint::Other,
        }
    }

    /// Its index into [`LABELS`].
    pub fn index(&self) -> usize {
        match self {
            Endpoint::Tenant(_) => 0,
            Endpoint::Prompt(_) => 1,
            Endpoint::Route(_) => 2,
            Endpoint::Layer1 => 3,
            Endpoint::Snapshot => 4,
            Endpoint::Snapshots => 5,
            Endpoint::Healthz => 6,
            Endpoint::Readyz => 7,
            Endpoint::Metrics => 8,
            Endpoint::Other => 9,
            Endpoint::Check => 10,
        }
    }

    /// Its metrics label.
    pub fn label(&self) -> &'static str {
        LABELS[self.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn every_path_has_the_endpoint_label_it_names() {
        for (path, label) in [
            ("/v1/tenants/acme/prompt", "prompt"),
            ("/v1/tenants/acme", "tenant"),
            ("/v1/routes/+14155550100", "route"),
            ("/v1/layer1", "layer1"),
            ("/v1/snapshot", "snapshot"),
            ("/v1/snapshots", "snapshots"),
            ("/v1/check", "check"),
            ("/healthz", "healthz"),
            ("/readyz", "readyz"),
            ("/metrics", "metrics"),
            ("/v1/tenants", "other"),
            ("/../etc", "other"),
        ] {
            assert_eq!(Endpoint::parse(path).label(), label, "{path}");
        }
        assert_eq!(
            Endpoint::parse("/v1/tenants/acme/prompt"),
            Endpoint::Prompt("acme")
        );
        assert_eq!(Endpoint::parse("/v1/tenants/"), Endpoint::Tenant(""));
    }
}
