//! A DynamoDB API of a test's own (dynoxide with its tables in a SQLite file of its own), so a
//! test can stop and restart it mid-write without touching the one the other tests share.

use std::process::Command;

use crate::own_server::{binary, OwnServer};

/// Starts dynoxide (`$FOLDLINE_DYNAMODB_BIN`, exported by scripts/test); its tables survive a
/// kill.
pub fn own_dynamodb() -> OwnServer {
    OwnServer::start("dynamodb", |dir, port| {
        let mut command = Command::new(binary("FOLDLINE_DYNAMODB_BIN", "dynoxide"));
        command
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--db-path")
            .arg(dir.join("tables.db"));
        command
    })
}
