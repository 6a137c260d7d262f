//! The S3 archive of the products topic.
//! - [`layout`]: object keys (per partition and offset range) and their continuity check.
//! - [`file`]: Avro object container files with the envelope schema embedded.
//! - [`bucket`]: the S3 bucket: PUT (multipart for big files), list, get.
//! - [`sink`]: the archiver, a consumer on the shared runtime.
//! - [`read`]: reading the archive back in log order per partition (rebuilds, restore).
//! - [`history`]: the archive then the topic, as one event source for rebuilds.
//! - [`restore`]: re-publishing archived events into a topic.
pub mod bucket;
pub mod file;
pub mod history;
pub mod layout;
pub mod read;
pub mod restore;
pub mod sink;

/// The archiver's consumer group.
pub const DEFAULT_GROUP: &str = "foldline-archiver";
