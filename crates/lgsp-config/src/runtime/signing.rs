//! `[signing]`: who may sign approvals (`PheDuyetDuLieu`, Thông tư 06/2023/TT-BNV) and when. The signing CAs are
//! separate from the mTLS CAs: a certificate that may open a connection is not thereby one that may approve data.
//! Without this section a gateway refuses approvals: it cannot tell a signed one from a forged one.

use std::time::Duration;

use super::ConfigPath;
use super::check::Checker;
use super::defaults;
use crate::file::FileSigning;

#[derive(Debug, Clone)]
pub struct SigningConfig {
    /// The signing CAs (PEM), loaded by the preparation stage.
    pub ca: Vec<ConfigPath>,
    pub crls: Vec<ConfigPath>,
    /// An agency's signing certificate names it by a SAN URI `<prefix><agency code>`.
    pub identity_uri_prefix: String,
    /// Approvals are made within the last `approval_window_days` days of the month they approve.
    pub approval_window_days: u32,
    /// How long after its month ends an approval may still arrive.
    pub approval_lateness: Duration,
    /// Each approved profile (SoCCCD, SHA-256) must be the last profile the agency sent through this hop.
    pub check_coverage: bool,
}

const DAY: Duration = Duration::from_secs(86_400);

pub(super) fn signing(c: &mut Checker<'_>, f: &FileSigning) -> SigningConfig {
    let window = c.duration_within(
        f.approval_window.as_ref(),
        "signing.approval_window",
        defaults::SIGNING_APPROVAL_WINDOW,
        &(DAY..=Duration::from_secs(28 * 86_400)),
    );
    if let Some(v) = &f.approval_window
        && !window.as_secs().is_multiple_of(DAY.as_secs())
    {
        c.problem(
            v,
            "signing.approval_window",
            "is counted in whole days of the month, e.g. \"5d\" (the last five days)",
        );
    }
    let prefix = super::tls::identity_uri_prefix(
        c,
        f.identity_uri_prefix.as_ref(),
        "signing.identity_uri_prefix",
    );
    SigningConfig {
        ca: c.paths(&f.ca, "signing.ca", true),
        crls: c.paths(&f.crls, "signing.crls", false),
        identity_uri_prefix: prefix,
        approval_window_days: u32::try_from(window.as_secs() / DAY.as_secs()).unwrap_or(5),
        approval_lateness: c.duration_within(
            f.approval_lateness.as_ref(),
            "signing.approval_lateness",
            defaults::SIGNING_APPROVAL_LATENESS,
            &(Duration::ZERO..=Duration::from_secs(62 * 86_400)),
        ),
        check_coverage: f.check_coverage.unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError};

    /// The embedded gateway.toml with its [signing] section replaced by `signing`.
    fn parse(signing: &str) -> Result<Config, ConfigError> {
        let base = include_str!("../../../../gateway.toml");
        let start = base.find("\n[signing]\n").expect("a [signing] section");
        let last = "check_coverage = true\n";
        let end = start + base[start..].find(last).expect("its last line") + last.len();
        let text = format!("{}{}\n[signing]\n{signing}\n", &base[..start], &base[end..]);
        crate::parse(&text, "t.toml", std::path::Path::new("/etc/lgsp"))
    }

    #[test]
    fn defaults_and_bounds() {
        let c = parse("ca = [\"s.pem\"]").expect("valid");
        let s = c.signing.expect("signing");
        assert_eq!(s.approval_window_days, 5);
        assert_eq!(s.approval_lateness, std::time::Duration::ZERO);
        assert_eq!(s.ca[0].path, std::path::Path::new("/etc/lgsp/s.pem"));
        assert_eq!(s.ca[0].origin.field, "signing.ca[0]");
        let e = parse("ca = [\"s.pem\"]\napproval_window = \"36h\"").expect_err("half days");
        assert!(e.to_string().contains("whole days"), "{e}");
        let e = parse("ca = [\"s.pem\"]\napproval_window = \"40d\"").expect_err("too long");
        assert!(e.to_string().contains("signing.approval_window"), "{e}");
        let e = parse("ca = []").expect_err("no CA");
        assert!(e.to_string().contains("signing.ca"), "{e}");
        let c = parse("ca = [\"s.pem\"]\napproval_window = \"3d\"\napproval_lateness = \"2d\"")
            .expect("valid");
        let s = c.signing.expect("signing");
        assert_eq!(
            (s.approval_window_days, s.approval_lateness.as_secs()),
            (3, 172_800)
        );
    }
}
