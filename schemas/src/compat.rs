//! Schema compatibility in the Confluent sense, on top of apache-avro's resolution checker.
//!
//! BACKWARD: the new schema can read data written with the previous one (checked against the
//! latest version); `_TRANSITIVE` variants check every earlier version. FORWARD swaps the
//! roles; FULL is both. A *partial* match (for example a union whose branches only overlap)
//! counts as incompatible, since some records would fail to resolve.

use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl FromStr for CompatibilityLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase()))
            .map_err(|_| format!("unknown compatibility level {s:?}"))
    }
}

impl CompatibilityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityLevel::None => "NONE",
            CompatibilityLevel::Backward => "BACKWARD",
            CompatibilityLevel::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityLevel::Forward => "FORWARD",
            CompatibilityLevel::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityLevel::Full => "FULL",
            CompatibilityLevel::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::FullTransitive
        )
    }
}

/// `true` when every record written with `writer` resolves into `reader`.
pub fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => {
            Err("only partially compatible: some records would not resolve".into())
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Checks `candidate` against `earlier` (oldest first) at `level`; returns every violation.
pub fn check(level: CompatibilityLevel, earlier: &[Schema], candidate: &Schema) -> Vec<String> {
    let against: &[Schema] = match (level, earlier.len()) {
        (CompatibilityLevel::None, _) | (_, 0) => return Vec::new(),
        (l, n) if !l.transitive() => &earlier[n - 1..],
        _ => earlier,
    };
    let mut messages = Vec::new();
    for (offset, old) in against.iter().enumerate() {
        let version = earlier.len() - against.len() + offset + 1;
        let backward = matches!(
            level,
            CompatibilityLevel::Backward
                | CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        );
        let forward = matches!(
            level,
            CompatibilityLevel::Forward
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        );
        if backward {
            if let Err(e) = can_read(old, candidate) {
                messages.push(format!(
                    "the new schema cannot read data written with version {version}: {e}"
                ));
            }
        }
        if forward {
            if let Err(e) = can_read(candidate, old) {
                messages.push(format!(
                    "version {version} cannot read data written with the new schema: {e}"
                ));
            }
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn adding_a_field_with_a_default_is_backward_compatible() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let v2 = schema(
            r#"{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}"#,
        );
        assert!(check(CompatibilityLevel::Backward, &[v1], &v2).is_empty());
    }

    #[test]
    fn adding_a_field_without_a_default_is_not() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let v2 = schema(r#"{"name":"a","type":"long"},{"name":"b","type":"string"}"#);
        let errors = check(CompatibilityLevel::Backward, &[v1], &v2);
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn transitive_checks_every_earlier_version() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let v2 = schema("");
        // v3 reads v2's records (no `a`: the default applies) but not v1's (`a` is a long).
        let v3 = schema(r#"{"name":"a","type":"string","default":"x"}"#);
        let earlier = [v1, v2];
        assert!(check(CompatibilityLevel::Backward, &earlier, &v3).is_empty());
        let errors = check(CompatibilityLevel::BackwardTransitive, &earlier, &v3);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("version 1"), "{errors:?}");
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!(
            "backward".parse::<CompatibilityLevel>().unwrap(),
            CompatibilityLevel::Backward
        );
        assert!("sideways".parse::<CompatibilityLevel>().is_err());
    }
}
