//! `[validation]`: where the packet schemas come from and the validator's limits.

use super::check::Checker;
use super::{ConfigPath, defaults};
use crate::file::FileValidation;

/// Where the packet schemas come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaSource {
    Embedded,
    Dir(ConfigPath),
}

#[derive(Debug, Clone)]
pub struct ValidationConfig {
    pub schemas: SchemaSource,
    pub max_errors: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    pub max_text_bytes: usize,
    /// `max_errors` for trial-mode requests.
    pub trial_max_errors: usize,
    pub domain_rules: bool,
}

pub(super) fn validation(c: &mut Checker<'_>, v: &FileValidation) -> ValidationConfig {
    let mut bounded = |x: &Option<toml::Spanned<u64>>, name: &str, default, range| {
        c.bounded(x.as_ref(), &format!("validation.{name}"), default, range)
    };
    let max_errors = bounded(
        &v.max_errors,
        "max_errors",
        defaults::MAX_ERRORS,
        &defaults::MAX_ERRORS_RANGE,
    );
    let trial_max_errors = bounded(
        &v.trial_max_errors,
        "trial_max_errors",
        defaults::TRIAL_MAX_ERRORS,
        &defaults::TRIAL_MAX_ERRORS_RANGE,
    );
    let max_depth = bounded(
        &v.max_depth,
        "max_depth",
        defaults::MAX_DEPTH,
        &defaults::MAX_DEPTH_RANGE,
    );
    let max_attributes = bounded(
        &v.max_attributes,
        "max_attributes",
        defaults::MAX_ATTRIBUTES,
        &defaults::MAX_ATTRIBUTES_RANGE,
    );
    let max_text_bytes = bounded(
        &v.max_text_bytes,
        "max_text_bytes",
        defaults::MAX_TEXT_BYTES,
        &defaults::MAX_TEXT_BYTES_RANGE,
    );
    ValidationConfig {
        schemas: match &v.schemas {
            Some(s) if s.get_ref() != "embedded" => {
                SchemaSource::Dir(c.path(s, "validation.schemas"))
            }
            _ => SchemaSource::Embedded,
        },
        max_errors,
        max_depth,
        max_attributes,
        max_text_bytes,
        trial_max_errors,
        domain_rules: v.domain_rules.unwrap_or(defaults::DOMAIN_RULES),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::problems_of;

    #[test]
    fn limits_are_bounded_and_named_by_their_section() {
        let p = problems_of("max_errors = 20", "max_errors = 0");
        assert_eq!(p[0].field, "validation.max_errors");
        assert!(p[0].message.contains("between 1 and 1000"), "{p:?}");
        let p = problems_of("max_depth = 32", "max_depth = 1000");
        assert_eq!(p[0].field, "validation.max_depth");
    }

    #[test]
    fn a_schema_directory_keeps_its_place() {
        let text = crate::EMBEDDED.replacen("schemas = \"embedded\"", "schemas = \"/srv/xsd\"", 1);
        let c = crate::parse(&text, "t.toml", std::path::Path::new(".")).unwrap();
        let SchemaSource::Dir(dir) = &c.validation.schemas else {
            panic!("{:?}", c.validation.schemas);
        };
        assert_eq!(dir.path, std::path::Path::new("/srv/xsd"));
        assert_eq!(dir.origin.field, "validation.schemas");
    }
}
