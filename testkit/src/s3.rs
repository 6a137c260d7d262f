//! An S3 server of a test's own (s3s-fs over a folder), so a test can stop and restart it
//! without touching the S3 server the broker keeps its log in.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct OwnS3 {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl OwnS3 {
    /// Starts s3s-fs (`$FOLDLINE_S3S_BIN`, exported by scripts/test) over a fresh folder.
    pub fn start() -> OwnS3 {
        let base = std::env::var("FOLDLINE_TEST_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        let dir = base.join(crate::unique("s3"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s3 = OwnS3 {
            port: crate::process::free_port(),
            dir,
            child: None,
        };
        s3.resume();
        s3
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and folder: what it held is still there.
    pub fn resume(&mut self) {
        let bin = std::env::var("FOLDLINE_S3S_BIN").unwrap_or_else(|_| "s3s-fs".into());
        let key = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.into());
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &key("AWS_ACCESS_KEY_ID", "foldline")])
            .args([
                "--secret-key",
                &key("AWS_SECRET_ACCESS_KEY", "foldline-secret"),
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs (set FOLDLINE_S3S_BIN)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("s3s-fs did not listen on {}", self.port);
    }

    /// Kills the server (SIGKILL), like a crash or a network cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
