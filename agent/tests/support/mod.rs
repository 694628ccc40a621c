//! What the agent's tests share: a real etcd on free loopback ports in a temporary data dir,
//! killed when dropped (also on panic), and the gate that skips (or, with CI=true or
//! LWTUN_REQUIRE_PRIV=1, fails) a test when /usr/bin/etcd is missing; [`tls`]: certificates
//! and an etcd serving TLS with client certificates and authentication.
#![allow(dead_code)]

pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

/// Debian's etcd-server.
pub const ETCD: &str = "/usr/bin/etcd";

/// Whether the test may run: true when etcd is installed; otherwise prints why the test is
/// skipped and returns false, or panics when skipping is forbidden.
pub fn etcd_installed(test: &str) -> bool {
    if Path::new(ETCD).exists() {
        return true;
    }
    let why = format!("{test}: {ETCD} missing (apt-get install etcd-server, see scripts/setup.sh)");
    let required = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
        || std::env::var("LWTUN_REQUIRE_PRIV")
            .map(|v| v == "1")
            .unwrap_or(false);
    if required {
        panic!("{why}, and CI=true/LWTUN_REQUIRE_PRIV=1 forbids skipping");
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED {why}\n").as_bytes(),
    );
    false
}

/// A private directory under /tmp, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("lwtun-agent-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-member etcd on loopback; killed when dropped (also on panic).
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        let mut e = Etcd {
            child: None,
            dir: dir.to_path_buf(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        e.spawn();
        e
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Command::new(ETCD)
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {ETCD}: {e}"));
        self.child = Some(child);
        let rt = runtime();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = rt.block_on(async {
                let mut c = Client::connect([self.url()], None).await.ok()?;
                tokio::time::timeout(Duration::from_secs(1), c.status())
                    .await
                    .ok()?
                    .ok()
            });
            if ok.is_some() {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("etcd exited ({st}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy after 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
