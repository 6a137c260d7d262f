//! Envelopes in the Confluent wire format (byte 0 = 0, bytes 1–4 = schema id big-endian, then
//! Avro binary), with schemas fetched from and registered in the schema registry by the
//! `schema_registry_converter` crate, which caches them by id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::avro::{envelope_to_value, AvroMappingError};
use crate::event::Envelope;
use crate::read::{read_envelope, NewerEvent, ReadError, WriterSchema};
use crate::PRODUCTS_VALUE_SCHEMA;

/// Why a record could not be encoded or decoded, split by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The registry did not answer: retry later, the record itself may be fine.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// The bytes can never be decoded (not Confluent framing, unknown schema id, bad Avro,
    /// wrong shape): dead-letter the record.
    #[error("undecodable record: {0}")]
    Undecodable(String),
    /// Written by a newer schema than this build knows (an event type or a field with a
    /// value): not to be dead-lettered or dropped but parked until this reader is upgraded.
    #[error("{0}")]
    NewerSchema(Box<NewerEvent>),
    #[error("cannot encode event: {0}")]
    Encode(String),
}

impl CodecError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable(_))
    }
}

fn classify(error: SRCError) -> CodecError {
    if error.retriable {
        CodecError::RegistryUnavailable(error.to_string())
    } else {
        CodecError::Undecodable(error.to_string())
    }
}

impl From<AvroMappingError> for CodecError {
    fn from(e: AvroMappingError) -> Self {
        CodecError::Undecodable(e.to_string())
    }
}

impl From<ReadError> for CodecError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Newer(event) => CodecError::NewerSchema(event),
            ReadError::Bad(e) => e.into(),
        }
    }
}

/// The admin token the project's own clients send to change the registry (it takes writes
/// only with one): `FOLDLINE_REGISTRY_TOKEN`, else an HS256 token signed with `secret` (the
/// producer's `FOLDLINE_JWT_SECRET`) as `subject`, valid a day; else none.
pub fn registry_token(subject: &str, secret: Option<&str>) -> Option<String> {
    let given = std::env::var("FOLDLINE_REGISTRY_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    given.or_else(|| {
        let secret = secret.filter(|s| !s.is_empty())?;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs()
            + 24 * 3600;
        let claims = serde_json::json!({"sub": subject, "role": "admin", "exp": exp});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .ok()
    })
}

/// Settings of the registry client; `token`: an admin bearer token, for the clients that
/// register schemas (the registry takes writes only with one; reads are open).
pub fn registry_settings(
    registry_url: &str,
    token: Option<&str>,
) -> Result<SrSettings, CodecError> {
    let mut builder = SrSettings::new_builder(registry_url.trim_end_matches('/').to_owned());
    builder.no_proxy().set_timeout(Duration::from_secs(5));
    if let Some(token) = token {
        builder.set_token_authorization(token);
    }
    builder
        .build()
        .map_err(|e| CodecError::RegistryUnavailable(e.to_string()))
}

/// Encodes and decodes the events of one topic.
pub struct EventCodec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    strategy: SubjectNameStrategy,
    writers_by_schema_id: Mutex<HashMap<u32, Arc<WriterSchema>>>,
}

impl EventCodec {
    /// A codec whose registrations carry [`registry_token`] (from `FOLDLINE_REGISTRY_TOKEN`
    /// or `FOLDLINE_JWT_SECRET` in the environment).
    pub fn new(registry_url: &str, topic: &str) -> Result<Self, CodecError> {
        let secret = std::env::var("FOLDLINE_JWT_SECRET").ok();
        let token = registry_token("foldline", secret.as_deref());
        Self::with_token(registry_url, topic, token.as_deref())
    }

    /// A codec that registers the topic's schema with `token` (an admin bearer token).
    pub fn with_token(
        registry_url: &str,
        topic: &str,
        token: Option<&str>,
    ) -> Result<Self, CodecError> {
        let settings = registry_settings(registry_url, token)?;
        let schema = SuppliedSchema::new(
            Some("io.foldline.products.ProductEvent".to_owned()),
            SchemaType::Avro,
            PRODUCTS_VALUE_SCHEMA.to_owned(),
        );
        Ok(EventCodec {
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings),
            strategy: SubjectNameStrategy::TopicNameStrategyWithSchema(
                topic.to_owned(),
                false,
                schema,
            ),
            writers_by_schema_id: Mutex::new(HashMap::new()),
        })
    }

    /// Registers (or finds) the committed schema under the topic's subject; returns its id.
    pub async fn writer_schema_id(&self) -> Result<u32, CodecError> {
        let subject = self.strategy.get_subject().map_err(classify)?;
        let schema = self
            .encoder
            .get_schema_and_id(&subject, self.strategy.clone())
            .await;
        match schema {
            Ok(schema) => Ok(schema.id),
            Err(error) => {
                // A failed registration is cached by the crate; clear it so a retry really retries.
                self.encoder.remove_errors_from_cache();
                Err(classify(error))
            }
        }
    }

    pub async fn encode(&self, envelope: &Envelope) -> Result<Vec<u8>, CodecError> {
        self.encoder
            .encode_value(envelope_to_value(envelope), &self.strategy)
            .await
            .map_err(|e| {
                self.encoder.remove_errors_from_cache();
                match classify(e) {
                    CodecError::Undecodable(m) => CodecError::Encode(m),
                    other => other,
                }
            })
    }

    /// Decodes `bytes`, waiting out a registry outage (retries from 100 ms, doubling to 5 s,
    /// with jitter, each logged): the answer is a decoded envelope or an error no retry can
    /// fix. Every reader of the log decodes through this, so none can skip an event because
    /// the registry was down for a while. (The same backoff as `foldline_service::retry`;
    /// this crate does not depend on the service crate.)
    pub async fn decode_waiting(&self, bytes: &[u8]) -> Result<Envelope, CodecError> {
        use backon::Retryable;
        let policy = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        (|| self.decode(bytes))
            .retry(policy)
            .when(CodecError::is_transient)
            .notify(|error, delay| {
                tracing::warn!(%error, retry_in = ?delay, "schema registry unavailable; waiting to decode");
            })
            .await
    }

    /// Decodes `bytes` once; [`CodecError::RegistryUnavailable`] means "try again later".
    pub async fn decode(&self, bytes: &[u8]) -> Result<Envelope, CodecError> {
        if bytes.len() < 5 || bytes[0] != 0 {
            return Err(CodecError::Undecodable(
                "not in the Confluent wire format (magic byte 0 + 4-byte schema id)".into(),
            ));
        }
        let decoded = match self.decoder.decode_with_schema(Some(bytes)).await {
            Ok(Some(decoded)) => decoded,
            Ok(None) => return Err(CodecError::Undecodable("empty value".into())),
            Err(error) => {
                if error.retriable {
                    self.decoder.remove_errors_from_cache();
                }
                return Err(classify(error));
            }
        };
        let id = decoded.schema.id;
        let writer = self.writer(id, &decoded.schema.parsed)?;
        Ok(read_envelope(&decoded.value, &writer, Some(id))?)
    }

    fn writer(
        &self,
        schema_id: u32,
        schema: &apache_avro::Schema,
    ) -> Result<Arc<WriterSchema>, CodecError> {
        let mut cache = self.writers_by_schema_id.lock().expect("not poisoned");
        if let Some(found) = cache.get(&schema_id) {
            return Ok(found.clone());
        }
        let writer = Arc::new(WriterSchema::of(schema)?);
        cache.insert(schema_id, writer.clone());
        Ok(writer)
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn a_registry_token_is_signed_with_the_secret_when_none_is_given() {
        if std::env::var("FOLDLINE_REGISTRY_TOKEN").is_ok() {
            return;
        }
        let token = registry_token("tests", Some("secret")).expect("signed");
        assert_eq!(token.split('.').count(), 3, "a JWT");
        assert!(registry_token("tests", None).is_none());
        assert!(registry_token("tests", Some("")).is_none());
    }
}
