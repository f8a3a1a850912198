//! Connection profiles: an agency keeps its connection settings (URL, certificate, key, CA, where its API key is,
//! a sample) in one TOML file; the command line overrides any of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ProbeOptions;

/// A connection profile (see `deploy/examples/agency-direct.toml`). Also what the command line gives.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub url: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// The environment variable holding the API key (never the key itself in a file).
    pub api_key_env: Option<String>,
    pub sample: Option<PathBuf>,
    #[serde(rename = "type")]
    pub message_type: Option<String>,
}

/// Why the options could not be put together.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("reading the profile {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the profile {path} is not valid: {error}")]
    Invalid {
        path: String,
        error: toml::de::Error,
    },
    #[error("give --{0} (or `{0}` in a --profile)")]
    Missing(&'static str),
    #[error("give --api-key, or put the key in the environment variable {0}")]
    NoApiKey(String),
}

/// The variable the API key is read from when neither the command line nor the profile names one.
pub const DEFAULT_API_KEY_ENV: &str = "LGSP_API_KEY";

impl Profile {
    /// Reads a profile; its relative paths resolve against its folder.
    pub fn read(path: &Path) -> Result<Profile, ProfileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ProfileError::Read {
            path: shown.clone(),
            error,
        })?;
        let mut p: Profile =
            toml::from_str(&text).map_err(|error| ProfileError::Invalid { path: shown, error })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for f in [&mut p.cert, &mut p.key, &mut p.ca, &mut p.sample]
            .into_iter()
            .flatten()
        {
            if f.is_relative() {
                *f = dir.join(&*f);
            }
        }
        Ok(p)
    }

    /// The probe's options: `given` (the command line) over this profile; the API key from `api_key`, else the
    /// environment variable `lookup` finds under the profile's `api_key_env` (default `LGSP_API_KEY`).
    pub fn options(
        self,
        given: Profile,
        api_key: Option<String>,
        lookup: impl Fn(&str) -> Option<String>,
        timeout: Duration,
    ) -> Result<ProbeOptions, ProfileError> {
        let env_name = self
            .api_key_env
            .clone()
            .unwrap_or_else(|| DEFAULT_API_KEY_ENV.to_owned());
        let api_key = api_key
            .or_else(|| lookup(&env_name))
            .ok_or(ProfileError::NoApiKey(env_name))?;
        let need = |v: Option<PathBuf>, name| v.ok_or(ProfileError::Missing(name));
        Ok(ProbeOptions {
            url: given.url.or(self.url).ok_or(ProfileError::Missing("url"))?,
            cert: need(given.cert.or(self.cert), "cert")?,
            key: need(given.key.or(self.key), "key")?,
            ca: need(given.ca.or(self.ca), "ca")?,
            api_key,
            sample: given.sample.or(self.sample),
            message_type: given.message_type.or(self.message_type),
            timeout: timeout.max(Duration::from_secs(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_profile(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn the_command_line_wins_and_relative_paths_follow_the_profile() {
        let (dir, path) = write_profile(
            "url = \"https://a:1/x\"\ncert = \"c.pem\"\nkey = \"/abs/k.pem\"\nca = \"ca.pem\"\napi_key_env = \"MY_KEY\"\n",
        );
        let given = Profile {
            url: Some("https://b:2/y".into()),
            ..Profile::default()
        };
        let o = Profile::read(&path)
            .unwrap()
            .options(
                given,
                None,
                |name| (name == "MY_KEY").then(|| "k".to_owned()),
                Duration::ZERO,
            )
            .unwrap();
        assert_eq!(o.url, "https://b:2/y");
        assert_eq!(o.cert, dir.path().join("c.pem"));
        assert_eq!(o.key, PathBuf::from("/abs/k.pem"));
        assert_eq!(o.api_key, "k");
        assert_eq!(o.timeout, Duration::from_secs(1));
    }

    #[test]
    fn what_is_missing_is_named() {
        let e = Profile::default()
            .options(Profile::default(), None, |_| None, Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "give --api-key, or put the key in the environment variable LGSP_API_KEY"
        );
        let e = Profile::default()
            .options(
                Profile::default(),
                Some("k".into()),
                |_| None,
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "give --url (or `url` in a --profile)");
        let (_dir, path) = write_profile("url = 1\n");
        assert!(matches!(
            Profile::read(&path),
            Err(ProfileError::Invalid { .. })
        ));
    }
}
