//! The config file, read again at every check: trusted keys and thresholds
//! apply at once (a key removed stops vouching, for the store and for what
//! is stored); any other setting only a restart applies, so a change to
//! one is reported as a `config_problem` rather than ignored in silence.

use tracing::{info, warn};

use strata_common::sign::{Role, TrustedKeys};

use super::Syncer;
use crate::config::Config;

/// The settings each check reads again; every other one of [`Config`]
/// is read once at start.
const LIVE: [&str; 2] = ["trusted_keys", "thresholds"];

/// The settings read once at start, taken from [`Config`]'s own fields (a
/// setting added to it is covered without a change here), each as it
/// serialises: durations as durations, paths as compared (`data/` and
/// `data` are one).
pub(super) struct RestartSettings(Vec<(String, serde_json::Value)>);

impl RestartSettings {
    /// Every setting of `c` but the [`LIVE`] ones.
    pub(super) fn of(c: &Config) -> Self {
        let fields = match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(map)) => map,
            // A plain struct always serialises to an object.
            _ => serde_json::Map::new(),
        };
        Self(
            fields
                .into_iter()
                .filter(|(name, _)| !LIVE.contains(&name.as_str()))
                .collect(),
        )
    }

    /// The names of the settings `now` holds other values for.
    pub(super) fn changed_in(&self, now: &Config) -> Vec<String> {
        let now = Self::of(now);
        self.0
            .iter()
            .filter(|(name, was)| {
                now.0.iter().find(|(n, _)| n == name).map(|(_, v)| v) != Some(was)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// `trust`'s keys as `/v1/snapshot` lists them: `role:key id`.
pub(super) fn trusted_ids(trust: &TrustedKeys) -> Vec<String> {
    let (keys, ..) = trust.summary();
    keys.iter()
        .map(|(role, id)| {
            let role = match role {
                Role::Publisher => "publisher",
                Role::Operator => "operator",
            };
            format!("{role}:{id}")
        })
        .collect()
}

impl Syncer {
    /// Reads the config's trusted keys again: a key added is trusted from
    /// this check on, a key removed (its entry, or its file) stops vouching
    /// at once, for the store and for what is stored. A config that no
    /// longer loads keeps the keys in use, and says so once.
    pub(super) fn reload_trust(&mut self) {
        let loaded = Config::load(&self.config_path)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let trust = c.trust_live(&self.config_path).map_err(|e| e.to_string())?;
                Ok((c, trust))
            });
        let (c, (trust, missing)) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                let message = format!(
                    "{e}; the trusted keys in use are kept, and the agent would not start with this file"
                );
                self.say_once(&message);
                self.shared.status().config_problem = Some(message);
                return;
            }
        };
        let changed = self.started_with.changed_in(&c);
        let mut problems = Vec::new();
        if !changed.is_empty() {
            problems.push(format!(
                "{} changed; the agent goes on with the values it started with until it is restarted",
                changed.join(", ")
            ));
        }
        // Revoked now, and fatal at the next start.
        if !missing.is_empty() {
            let files: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
            problems.push(format!(
                "trusted key file(s) {} gone: no longer trusted, and the agent would not start with this file (remove their [[trusted_keys]] entries, or put the files back)",
                files.join(", ")
            ));
        }
        self.shared.status().config_problem = (!problems.is_empty())
            .then(|| format!("{}: {}", self.config_path.display(), problems.join("; ")));
        if changed.is_empty() {
            self.config_said = None;
        } else {
            self.say_once(&format!(
                "{} changed in {}: a restart applies it",
                changed.join(", "),
                self.config_path.display()
            ));
        }
        if missing != self.missing_keys {
            for path in missing.iter().filter(|p| !self.missing_keys.contains(p)) {
                warn!(key = %path.display(), "trusted key file is gone; it no longer vouches for anything");
            }
            self.missing_keys = missing;
        }
        if trust.summary() == self.trust.summary() {
            return;
        }
        info!(
            publisher_keys = trust.count(Role::Publisher),
            operator_keys = trust.count(Role::Operator),
            "trusted keys changed; checking what is served against them"
        );
        self.shared.status().trusted_keys = trusted_ids(&trust);
        self.shared
            .trust
            .store(Some(std::sync::Arc::new(trust.clone())));
        self.trust = trust;
        self.refused = None;
        let served = self.shared.served.load_full();
        self.mark_untrusted(served.as_deref());
        let unvouched = served.as_ref().and_then(|r| {
            let meta = r.current_meta()?;
            self.vouches(meta)
                .err()
                .map(|e| format!("served snapshot {} no longer verifies: {e}", meta.version))
        });
        drop(served);
        if let Some(why) = unvouched
            && let Err(e) = self.drop_stored(&why)
        {
            warn!("{e}");
        }
    }

    /// Logs `message` about the config file unless it was the last said.
    fn say_once(&mut self, message: &str) {
        if self.config_said.as_deref() != Some(message) {
            warn!("{message}");
            self.config_said = Some(message.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RestartSettings;
    use crate::config::Config;

    fn config(extra: &str) -> Config {
        let text = format!(
            "source = \"file:///srv/store\"\n{extra}\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"/k.pub\"\n"
        );
        toml::from_str(&text).expect("config")
    }

    #[test]
    fn every_setting_but_the_trusted_keys_needs_a_restart() {
        let was = RestartSettings::of(&config(""));
        assert!(was.changed_in(&config("")).is_empty());
        assert_eq!(was.changed_in(&config("retain = 9")), ["retain"]);
        assert_eq!(
            was.changed_in(&config("poll_interval = \"7s\"\nregion = \"eu\"")),
            ["poll_interval", "region"]
        );
        // Live settings are not restart settings.
        assert!(
            was.changed_in(&config("[thresholds]\npublisher = 2"))
                .is_empty()
        );
        // Every field of Config is covered, whatever is added to it later.
        assert!(was.0.iter().any(|(n, _)| n == "metrics_listen"));
        assert!(was.0.iter().any(|(n, _)| n == "pin_file"));
    }

    #[test]
    fn paths_are_compared_as_paths() {
        let was = RestartSettings::of(&config("data_dir = \"/var/lib/strata\""));
        assert!(
            was.changed_in(&config("data_dir = \"/var/lib/./strata/\""))
                .is_empty()
        );
        assert_eq!(
            was.changed_in(&config("data_dir = \"/var/lib/other\"")),
            ["data_dir"]
        );
    }
}
