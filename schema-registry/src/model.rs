//! The registry's state and rules, without I/O: what a register, lookup or config change
//! means, and the log records that persist it. [`Registry::apply`] folds a record in; the
//! same fold rebuilds the state from the `_schemas` topic at start-up.

use std::collections::{BTreeMap, HashMap};

use apache_avro::Schema;
use foldline_schemas::compat::{self, CompatibilityLevel};
use serde::{Deserialize, Serialize};

/// One record of the `_schemas` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogRecord {
    Schema {
        subject: String,
        version: u32,
        id: u32,
        schema: String,
    },
    Config {
        /// `None` is the global default.
        subject: Option<String>,
        level: CompatibilityLevel,
    },
}

impl LogRecord {
    /// The Kafka key: later records with the same key supersede earlier ones (compaction).
    pub fn key(&self) -> String {
        match self {
            LogRecord::Schema {
                subject, version, ..
            } => format!("schema/{subject}/{version}"),
            LogRecord::Config {
                subject: Some(s), ..
            } => format!("config/subject/{s}"),
            LogRecord::Config { subject: None, .. } => "config/global".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\": {details}")]
    Incompatible { subject: String, details: String },
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    #[error("Unsupported schema type {0}: this registry stores AVRO schemas only")]
    UnsupportedSchemaType(String),
}

#[derive(Debug, Clone)]
pub struct Registered {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

#[derive(Debug, Default)]
pub struct Registry {
    schemas_by_id: HashMap<u32, String>,
    id_by_normalized: HashMap<String, u32>,
    /// subject → ids by version (index 0 = version 1).
    subjects: BTreeMap<String, Vec<u32>>,
    global_level: Option<CompatibilityLevel>,
    subject_levels: HashMap<String, CompatibilityLevel>,
}

/// Parses an Avro schema and returns it with its identity: the JSON with sorted keys and no
/// whitespace, so formatting does not make a new schema but a changed default does.
pub fn parse(schema: &str) -> Result<(Schema, String), RegistryError> {
    let json: serde_json::Value =
        serde_json::from_str(schema).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
    let parsed = Schema::parse(&json).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
    Ok((parsed, json.to_string()))
}

impl Registry {
    pub fn apply(&mut self, record: LogRecord) {
        match record {
            LogRecord::Schema {
                subject,
                version,
                id,
                schema,
            } => {
                if let Ok((_, normalized)) = parse(&schema) {
                    self.id_by_normalized.entry(normalized).or_insert(id);
                }
                self.schemas_by_id.insert(id, schema);
                let versions = self.subjects.entry(subject).or_default();
                let index = version as usize - 1;
                if versions.len() <= index {
                    versions.resize(index + 1, id);
                }
                versions[index] = id;
            }
            LogRecord::Config {
                subject: None,
                level,
            } => self.global_level = Some(level),
            LogRecord::Config {
                subject: Some(subject),
                level,
            } => {
                self.subject_levels.insert(subject, level);
            }
        }
    }

    pub fn global_level(&self) -> CompatibilityLevel {
        self.global_level.unwrap_or(CompatibilityLevel::Backward)
    }

    pub fn subject_level(&self, subject: &str) -> Option<CompatibilityLevel> {
        self.subject_levels.get(subject).copied()
    }

    pub fn effective_level(&self, subject: &str) -> CompatibilityLevel {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    pub fn subjects(&self) -> Vec<String> {
        self.subjects.keys().cloned().collect()
    }

    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let ids = self.subject(subject)?;
        Ok((1..=ids.len() as u32).collect())
    }

    fn subject(&self, subject: &str) -> Result<&Vec<u32>, RegistryError> {
        self.subjects
            .get(subject)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))
    }

    /// `version` is a number, `latest` or `-1`.
    pub fn version(&self, subject: &str, version: &str) -> Result<Registered, RegistryError> {
        let ids = self.subject(subject)?;
        let number: u32 = match version {
            "latest" | "-1" => ids.len() as u32,
            v => v
                .parse()
                .ok()
                .filter(|n| *n >= 1 && (*n as usize) <= ids.len())
                .ok_or_else(|| RegistryError::VersionNotFound(version.to_owned()))?,
        };
        let id = ids[number as usize - 1];
        Ok(Registered {
            subject: subject.to_owned(),
            version: number,
            id,
            schema: self.schemas_by_id[&id].clone(),
        })
    }

    pub fn schema_by_id(&self, id: u32) -> Result<&str, RegistryError> {
        self.schemas_by_id
            .get(&id)
            .map(String::as_str)
            .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))
    }

    /// Subjects and versions that use schema `id`.
    pub fn usages(&self, id: u32) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(subject, ids)| {
                ids.iter()
                    .enumerate()
                    .filter(move |(_, i)| **i == id)
                    .map(move |(index, _)| (subject.clone(), index as u32 + 1))
            })
            .collect()
    }

    /// The version of `subject` holding this schema, if any (the `POST /subjects/{s}` lookup).
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<Registered, RegistryError> {
        let ids = self.subject(subject)?;
        let (_, normalized) = parse(schema)?;
        let id = self
            .id_by_normalized
            .get(&normalized)
            .copied()
            .ok_or_else(|| RegistryError::SchemaNotFound(String::new()))?;
        let index = ids
            .iter()
            .rposition(|i| *i == id)
            .ok_or_else(|| RegistryError::SchemaNotFound(String::new()))?;
        self.version(subject, &(index + 1).to_string())
    }

    /// Violations of `subject`'s compatibility level by `schema`, against versions up to `upto`.
    pub fn compatibility_errors(
        &self,
        subject: &str,
        schema: &Schema,
        upto: Option<u32>,
    ) -> Vec<String> {
        let Some(ids) = self.subjects.get(subject) else {
            return Vec::new();
        };
        let upto = upto.map_or(ids.len(), |v| (v as usize).min(ids.len()));
        let earlier: Vec<Schema> = ids[..upto]
            .iter()
            .filter_map(|id| parse(&self.schemas_by_id[id]).ok().map(|(s, _)| s))
            .collect();
        compat::check(self.effective_level(subject), &earlier, schema)
    }

    /// Decides a registration. `Ok(Err(id))` means the schema is already registered under the
    /// subject (nothing to write); `Ok(Ok(record))` is the record to append.
    pub fn plan_register(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Result<LogRecord, u32>, RegistryError> {
        let (parsed, normalized) = parse(schema)?;
        let existing_id = self.id_by_normalized.get(&normalized).copied();
        if let (Some(id), Some(ids)) = (existing_id, self.subjects.get(subject)) {
            if ids.contains(&id) {
                return Ok(Err(id));
            }
        }
        let errors = self.compatibility_errors(subject, &parsed, None);
        if !errors.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                details: errors.join("; "),
            });
        }
        let id = existing_id
            .unwrap_or_else(|| self.schemas_by_id.keys().max().copied().unwrap_or(0) + 1);
        let version = self.subjects.get(subject).map_or(0, Vec::len) as u32 + 1;
        Ok(Ok(LogRecord::Schema {
            subject: subject.to_owned(),
            version,
            id,
            schema: schema.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
    const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"string","default":""}]}"#;
    const BAD: &str = r#"{"type":"record","name":"R","fields":[{"name":"c","type":"string"}]}"#;

    fn register(
        registry: &mut Registry,
        subject: &str,
        schema: &str,
    ) -> Result<u32, RegistryError> {
        match registry.plan_register(subject, schema)? {
            Ok(record) => {
                let LogRecord::Schema { id, .. } = record.clone() else {
                    unreachable!()
                };
                registry.apply(record);
                Ok(id)
            }
            Err(id) => Ok(id),
        }
    }

    #[test]
    fn given_nothing_when_registering_then_version_1_with_id_1() {
        let mut registry = Registry::default();
        assert_eq!(register(&mut registry, "t-value", V1), Ok(1));
        assert_eq!(registry.version("t-value", "latest").unwrap().version, 1);
    }

    #[test]
    fn given_a_schema_when_registering_it_again_reformatted_then_same_id_and_no_new_version() {
        let mut registry = Registry::default();
        register(&mut registry, "t-value", V1).unwrap();
        let reformatted = V1.replace(',', " ,\n ");
        assert_eq!(register(&mut registry, "t-value", &reformatted), Ok(1));
        assert_eq!(registry.versions("t-value").unwrap(), vec![1]);
    }

    #[test]
    fn given_the_same_schema_under_another_subject_then_same_id_version_1() {
        let mut registry = Registry::default();
        register(&mut registry, "a-value", V1).unwrap();
        assert_eq!(register(&mut registry, "b-value", V1), Ok(1));
        assert_eq!(registry.usages(1).len(), 2);
    }

    #[test]
    fn given_v1_when_registering_an_incompatible_schema_then_rejected_under_backward() {
        let mut registry = Registry::default();
        register(&mut registry, "t-value", V1).unwrap();
        assert!(matches!(
            register(&mut registry, "t-value", BAD),
            Err(RegistryError::Incompatible { .. })
        ));
        assert_eq!(register(&mut registry, "t-value", V2), Ok(2));
    }

    #[test]
    fn given_level_none_then_anything_goes() {
        let mut registry = Registry::default();
        register(&mut registry, "t-value", V1).unwrap();
        registry.apply(LogRecord::Config {
            subject: Some("t-value".into()),
            level: CompatibilityLevel::None,
        });
        assert_eq!(register(&mut registry, "t-value", BAD), Ok(2));
    }

    #[test]
    fn lookup_finds_the_version_of_a_registered_schema() {
        let mut registry = Registry::default();
        register(&mut registry, "t-value", V1).unwrap();
        register(&mut registry, "t-value", V2).unwrap();
        assert_eq!(registry.lookup("t-value", V2).unwrap().version, 2);
        assert!(matches!(
            registry.lookup("t-value", BAD),
            Err(RegistryError::SchemaNotFound(_))
        ));
        assert!(matches!(
            registry.lookup("x", V1),
            Err(RegistryError::SubjectNotFound(_))
        ));
    }

    #[test]
    fn invalid_schemas_are_rejected() {
        let registry = Registry::default();
        assert!(matches!(
            registry.plan_register("t", r#"{"type":"record"}"#),
            Err(RegistryError::InvalidSchema(_))
        ));
    }
}
