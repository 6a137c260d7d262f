//! Servers of a test's own (a broker, an S3 server, a DynamoDB API): each on a free port with
//! its data in a folder of its own under `FOLDLINE_TEST_DATA`, so a test can SIGKILL and
//! restart it without disturbing the servers other tests share. Data survives a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Builds the server's command line from its folder and port.
pub type CommandLine = Box<dyn Fn(&Path, u16) -> Command + Send + Sync>;

pub struct OwnServer {
    pub port: u16,
    /// The server's data folder.
    pub dir: PathBuf,
    name: &'static str,
    command: CommandLine,
    child: Option<Child>,
}

impl OwnServer {
    /// Starts `name` in a fresh folder `<FOLDLINE_TEST_DATA>/<name>-<random>`.
    pub fn start(
        name: &'static str,
        command: impl Fn(&Path, u16) -> Command + Send + Sync + 'static,
    ) -> OwnServer {
        let base = std::env::var("FOLDLINE_TEST_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        let dir = base.join(crate::unique(name));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = OwnServer {
            port: crate::process::free_port(),
            dir,
            name,
            command: Box::new(command),
            child: None,
        };
        server.resume();
        server
    }

    /// `http://127.0.0.1:<port>`, for servers that speak HTTP.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and folder: what it held is still there.
    pub fn resume(&mut self) {
        let child = (self.command)(&self.dir, self.port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} (is its binary's variable set?): {e}", self.name));
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} did not listen on {}", self.name, self.port);
    }

    /// Kills the server (SIGKILL), like a crash or a network cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A binary named by an environment variable (exported by `scripts/test`), else on the PATH.
pub fn binary(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.into())
}
