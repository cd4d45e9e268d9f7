//! The shared test sshd (scripts/test-sshd) and OpenSSH client helpers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{Gateway, sha256_hex};

pub struct Sshd {
    pub port: u16,
    /// The login sshd accepts (jitgate-test as root).
    pub user: String,
    pub home: PathBuf,
    pub dir: PathBuf,
}

/// The sshd, started on first use (idempotent, locked).
pub fn sshd() -> Sshd {
    let vars = super::fixture("test-sshd", "openssh-server missing? run ./scripts/install-deps");
    Sshd {
        port: vars["JITGATE_TEST_SSHD_PORT"].parse().unwrap(),
        user: vars["JITGATE_TEST_SSHD_USER"].clone(),
        home: PathBuf::from(&vars["JITGATE_TEST_SSHD_HOME"]),
        dir: PathBuf::from(&vars["JITGATE_TEST_SSHD_DIR"]),
    }
}

/// How the gateway logs in upstream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The sshd's authorized gateway_key.
    Key,
    /// Short-lived certificates from the gateway's upstream CA.
    Ca,
}

impl Sshd {
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A `[[resources]]` block for this sshd.
    pub fn resource(&self, name: &str, mode: Upstream) -> String {
        let cred = match mode {
            Upstream::Key => format!("upstream_key_file = \"{}\"", self.dir.join("gateway_key").display()),
            Upstream::Ca => "upstream_ca = true".to_string(),
        };
        format!(
            "[[resources]]\nname = \"{name}\"\nkind = \"ssh\"\naddress = \"{}\"\nknown_hosts_file = \"{}\"\nlogins = [\"{}\", \"nobody-else\"]\n{cred}\n\n",
            self.address(),
            self.dir.join("known_hosts").display(),
            self.user
        )
    }

    /// Trust a gateway's upstream CA (appends to TrustedUserCAKeys).
    pub fn trust_ca(&self, gw: &Gateway) {
        use std::io::Write;
        let ca = std::fs::read_to_string(gw.data_dir().join("ssh/upstream_ca.pub")).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("trusted_ca.pub"))
            .unwrap();
        f.write_all(ca.as_bytes()).unwrap();
    }

    /// The key alice logs in to the gateway with (also authorized on the sshd, for direct runs).
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_key")
    }

    pub fn client_pub(&self) -> String {
        std::fs::read_to_string(self.dir.join("client_key.pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// `ssh` straight to the sshd (for comparisons).
    pub fn direct(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(base_opts(&self.client_key()))
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.dir.join("known_hosts").display()))
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", self.user));
        c
    }
}

/// Identities for SSH tests: alice [dev] with the client key, bob [dba], root [admins].
pub fn identities(sshd: &Sshd) -> String {
    format!(
        "[[identities]]\nname = \"alice@example.com\"\ngroups = [\"dev\"]\ntoken_sha256 = \"{}\"\nssh_keys = [\"{}\"]\n\n\
         [[identities]]\nname = \"bob@example.com\"\ngroups = [\"dba\"]\ntoken_sha256 = \"{}\"\n\n\
         [[identities]]\nname = \"root@example.com\"\ngroups = [\"jitgate-admins\", \"jitgate-auditors\"]\ntoken_sha256 = \"{}\"\n\n",
        sha256_hex("alice-token"),
        sshd.client_pub(),
        sha256_hex("bob-token"),
        sha256_hex("root-token"),
    )
}

/// Options every client run uses: no ~/.ssh, no agent, no prompts.
pub fn base_opts(key: &Path) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([key.display().to_string()])
    .collect()
}

impl Gateway {
    /// Host and port of the SSH front end.
    pub fn ssh_port(&self) -> u16 {
        self.ssh_addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    /// A known_hosts file pinning the gateway's host key (as `jitgate ssh-config` does).
    pub fn ssh_known_hosts(&self) -> PathBuf {
        let p = self.dir.path().join("gw_known_hosts");
        if !p.exists() {
            let key = std::fs::read_to_string(self.data_dir().join("ssh/host_key.pub")).unwrap();
            let fields: Vec<&str> = key.split_whitespace().take(2).collect();
            std::fs::write(&p, format!("[127.0.0.1]:{} {}\n", self.ssh_port(), fields.join(" "))).unwrap();
        }
        p
    }

    /// `ssh` through the gateway as `target` (`LOGIN@RESOURCE` or `RESOURCE`) with `key`.
    pub fn ssh(&self, key: &Path, target: &str) -> Command {
        self.ssh_with(key, target, &[])
    }

    /// Like [`Gateway::ssh`] with extra client options (before the destination).
    pub fn ssh_with(&self, key: &Path, target: &str, extra: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(base_opts(key))
            .args(extra)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.ssh_known_hosts().display()))
            .arg("-p")
            .arg(self.ssh_port().to_string())
            .arg(format!("{target}@127.0.0.1"));
        c
    }

    /// Options for scp/sftp/rsync -e through the gateway.
    pub fn ssh_opts(&self, key: &Path) -> Vec<String> {
        let mut v = base_opts(key);
        v.push("-o".into());
        v.push(format!("UserKnownHostsFile={}", self.ssh_known_hosts().display()));
        v
    }
}

/// Run with stdin from `input`.
pub fn run_with_input(mut c: Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    out
}

/// Hex SHA-256 of bytes.
pub fn sha256_bytes(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}
