//! An S3 server of a test's own (s3s-fs over a folder), so a test can stop and restart it
//! without touching the S3 server the other tests share.

use std::process::Command;

use crate::own_server::{binary, OwnServer};

/// Starts s3s-fs (`$FOLDLINE_S3S_BIN`, exported by scripts/test) over a folder of its own.
pub fn own_s3() -> OwnServer {
    OwnServer::start("s3", |dir, port| {
        let key = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.into());
        let mut command = Command::new(binary("FOLDLINE_S3S_BIN", "s3s-fs"));
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &key("AWS_ACCESS_KEY_ID", "foldline")])
            .args([
                "--secret-key",
                &key("AWS_SECRET_ACCESS_KEY", "foldline-secret"),
            ])
            .arg(dir);
        command
    })
}
