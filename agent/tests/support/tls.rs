//! TLS for the agent's tests: certificates made with rcgen (a CA, etcd's server certificate,
//! client certificates good, foreign and expired), an etcd that serves clients over TLS only
//! and asks for client certificates, and the switch that turns its authentication on with a
//! user whose role covers the fleet's keys only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, Permission};
use lwtun_agent::etcd::{AccessConfig, EtcdAccess};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};

use super::{free_port, runtime, ETCD};

pub const ROOT_PASSWORD: &str = "root-secret";
pub const AGENT_USER: &str = "lwtun-agent";
pub const AGENT_PASSWORD: &str = "agent-secret";

/// A CA: its certificate on disk, and the issuer that signs with it.
pub struct Ca {
    pub pem: PathBuf,
    pub issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` with `usage`, signed by this CA: (cert, key) files.
    pub fn issue(
        &self,
        dir: &Path,
        file: &str,
        cn: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        self.issue_with(dir, file, cn, names, usage, |_| {})
    }

    /// [`Ca::issue`] with the parameters changed by `edit` (validity).
    pub fn issue_with(
        &self,
        dir: &Path,
        file: &str,
        cn: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// The certificates of one test: etcd's CA (server and client certificates) and a stranger CA.
pub struct Pki {
    pub ca: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
    pub other_ca: PathBuf,
    pub stranger: (PathBuf, PathBuf),
    /// Signed by etcd's CA, valid in 2020 only.
    pub expired: (PathBuf, PathBuf),
}

pub fn pki(dir: &Path) -> Pki {
    let ca = Ca::new(dir, "etcd-ca");
    let other = Ca::new(dir, "other-ca");
    let server = ca.issue(
        dir,
        "server",
        "etcd",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    // The CN is not an etcd user: with auth on, no --etcd-user is refused, not let in by name.
    let client = ca.issue(
        dir,
        "client",
        "agent-client",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let stranger = other.issue(
        dir,
        "stranger",
        "stranger",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let expired = ca.issue_with(
        dir,
        "expired",
        "agent-client",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        |p| {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2020, 12, 31);
        },
    );
    Pki {
        expired,
        ca: ca.pem.clone(),
        server,
        client,
        other_ca: other.pem.clone(),
        stranger,
    }
}

/// etcd serving clients over TLS only, client certificates required; killed when dropped.
pub struct TlsEtcd {
    pub child: Child,
    pub dir: PathBuf,
    pub port: u16,
}

impl TlsEtcd {
    pub fn start(dir: &Path, pki: &Pki) -> TlsEtcd {
        let port = free_port();
        let peer = format!("http://127.0.0.1:{}", free_port());
        let client = format!("https://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new(ETCD)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .arg("--cert-file")
            .arg(&pki.server.0)
            .arg("--key-file")
            .arg(&pki.server.1)
            .arg("--trusted-ca-file")
            .arg(&pki.ca)
            .arg("--client-cert-auth")
            // tokens expire within the test: the agents must renew theirs
            .args(["--auth-token-ttl", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {ETCD}: {e}"));
        let mut etcd = TlsEtcd {
            child,
            dir: dir.to_path_buf(),
            port,
        };
        let access = etcd.access(pki, |_| {});
        let rt = runtime();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = rt.block_on(async {
                let mut c = Client::connect([etcd.url()], Some(access.connect_options()))
                    .await
                    .ok()?;
                tokio::time::timeout(Duration::from_secs(1), c.status())
                    .await
                    .ok()?
                    .ok()
            });
            if ok.is_some() {
                return etcd;
            }
            if let Ok(Some(st)) = etcd.child.try_wait() {
                panic!("etcd exited ({st}): {}", etcd.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy after 20 s: {}",
                etcd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// The agent's access with etcd's CA and the good client certificate, changed by `edit`.
    pub fn access(&self, pki: &Pki, edit: impl FnOnce(&mut AccessConfig)) -> EtcdAccess {
        let mut config = AccessConfig {
            ca: Some(pki.ca.clone()),
            cert: Some(pki.client.0.clone()),
            key: Some(pki.client.1.clone()),
            ..AccessConfig::default()
        };
        edit(&mut config);
        config.load(&[self.url()]).unwrap()
    }

    /// Turns authentication on: root, and a user whose role may read and write `root/` only.
    pub fn enable_auth(&self, pki: &Pki, root: &str) {
        let access = self.access(pki, |_| {});
        let rt = runtime();
        rt.block_on(async {
            let mut c = Client::connect([self.url()], Some(access.connect_options())).await?;
            c.user_add("root", ROOT_PASSWORD, None).await?;
            c.user_grant_role("root", "root").await?;
            c.role_add(AGENT_USER).await?;
            c.role_grant_permission(AGENT_USER, Permission::read_write(root).with_prefix())
                .await?;
            c.user_add(AGENT_USER, AGENT_PASSWORD, None).await?;
            c.user_grant_role(AGENT_USER, AGENT_USER).await?;
            // a user of another application: its role covers /other/ only
            c.role_add("other").await?;
            c.role_grant_permission("other", Permission::read_write("/other/").with_prefix())
                .await?;
            c.user_add("other", AGENT_PASSWORD, None).await?;
            c.user_grant_role("other", "other").await?;
            c.auth_enable().await?;
            Ok::<(), etcd_client::Error>(())
        })
        .unwrap_or_else(|e| panic!("enable auth: {e}: {}", self.log()));
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
