//! Against sushy-tools, an independent real Redfish server (PyPI). `.ci/run` installs it into
//! `.venv`; elsewhere set SOVEREIGN_SUSHY_BIN to its bin folder. Without it the tests say they
//! were skipped, except in CI (CI=true), where a missing sushy-tools is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use sovereign_agent::mockbmc::{self, MockBmc};
use sovereign_agent::redfish::{self, BmcSample, Endpoint, FailureClass};

fn mockups() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/redfish-mockups")
}

fn sushy_bin(name: &str) -> Option<PathBuf> {
    let dirs = [
        std::env::var_os("SOVEREIGN_SUSHY_BIN").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin")),
    ];
    let found = dirs
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "{name} not found: .ci/run must install sushy-tools into .venv"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED sushy tests: {name} not installed (pip install sushy-tools)"
        );
    }
    found
}

/// A sushy process, killed on drop.
struct Sushy(Child);

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(bin: &Path, args: &[&str], addr: SocketAddr, env: &[(&str, &str)]) -> Sushy {
    let port = addr.port().to_string();
    let mut cmd = Command::new(bin);
    cmd.args(["-i", "127.0.0.1", "-p", &port])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let sushy = Sushy(child);
    let t = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} did not start",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sushy
}

fn endpoint(address: String) -> Endpoint {
    Endpoint {
        address,
        username: "admin".into(),
        password: "password".into(),
        ca_bundle_pem: None,
        insecure_skip_verify: false,
        timeout: Duration::from_secs(10),
    }
}

async fn read(ep: &Endpoint) -> Result<BmcSample, redfish::RedfishError> {
    redfish::collect(Arc::new(redfish::connect(ep).unwrap())).await
}

fn normalise(mut s: BmcSample) -> BmcSample {
    s.observed_at_unix_ms = 0;
    s.expand_refused = false;
    s
}

#[tokio::test]
async fn sushy_static_serves_the_same_fields_as_our_reading_of_the_mockups() {
    if !sovereign_agent::mockbmc::have_mockups(
        "sushy_static_serves_the_same_fields_as_our_reading_of_the_mockups",
    ) {
        return;
    }
    let Some(bin) = sushy_bin("sushy-static") else {
        return;
    };
    for tree in [
        "dmtf/public-rackmount1",
        "dmtf/public-localstorage",
        "variants/dell-intrusion",
        "vendor/lenovo",
    ] {
        let root = mockbmc::service_root(&mockups().join(tree));
        let addr = free_port();
        let _sushy = start(&bin, &["-m", root.to_str().unwrap()], addr, &[]);
        let via_sushy = read(&endpoint(format!("http://{addr}"))).await.unwrap();
        assert!(
            via_sushy.expand_refused,
            "{tree}: sushy-static refuses $expand, we must fall back"
        );
        let ours = mockbmc::start(MockBmc::new(mockups().join(tree)))
            .await
            .unwrap();
        let via_mock = read(&endpoint(ours.url())).await.unwrap();
        assert!(!via_sushy.systems.is_empty(), "{tree}");
        assert_eq!(normalise(via_sushy), normalise(via_mock), "{tree}");
    }
}

fn htpasswd(dir: &Path, bin_dir: &Path) -> PathBuf {
    // bcrypt cost 4: sushy checks the hash on every request (cost 12 takes ~1.2 s each).
    let out = Command::new(bin_dir.join("python"))
        .args(["-c", "import bcrypt; print('admin:' + bcrypt.hashpw(b'password', bcrypt.gensalt(4)).decode())"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("htpasswd");
    std::fs::write(&path, out.stdout).unwrap();
    path
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sovereign-sushy-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn sushy_emulator_basic_auth() {
    let Some(bin) = sushy_bin("sushy-emulator") else {
        return;
    };
    let dir = tempdir("auth");
    let auth = htpasswd(&dir, bin.parent().unwrap());
    let config = dir.join("emulator.conf");
    std::fs::write(
        &config,
        format!("SUSHY_EMULATOR_AUTH_FILE = '{}'\n", auth.display()),
    )
    .unwrap();
    let addr = free_port();
    let _sushy = start(
        &bin,
        &["--fake", "--config", config.to_str().unwrap()],
        addr,
        &[],
    );
    let good = read(&endpoint(format!("http://{addr}"))).await.unwrap();
    assert!(!good.systems.is_empty());
    assert!(
        good.systems.iter().all(|s| s.power_state.is_some()),
        "{:?}",
        good.systems
    );
    let mut bad = endpoint(format!("http://{addr}"));
    bad.password = "wrong".into();
    let err = read(&bad).await.unwrap_err();
    assert_eq!(err.class(), FailureClass::Unauthorized, "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn tls_is_verified_against_the_bmc_ca() {
    let Some(bin) = sushy_bin("sushy-emulator") else {
        return;
    };
    let dir = tempdir("tls");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    std::fs::write(dir.join("bmc.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.join("bmc.key"), leaf_key.serialize_pem()).unwrap();
    let addr = free_port();
    let crt = dir.join("bmc.crt");
    let key = dir.join("bmc.key");
    let _sushy = start(
        &bin,
        &[
            "--fake",
            "--ssl-certificate",
            crt.to_str().unwrap(),
            "--ssl-key",
            key.to_str().unwrap(),
        ],
        addr,
        &[],
    );
    let url = format!("https://{addr}");

    let mut trusted = endpoint(url.clone());
    trusted.ca_bundle_pem = Some(ca.pem());
    assert!(
        !read(&trusted).await.unwrap().systems.is_empty(),
        "the BMC's own CA is trusted"
    );

    let other_ca = CertifiedIssuer::self_signed(
        {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "Another data centre CA");
            p
        },
        KeyPair::generate().unwrap(),
    )
    .unwrap();
    let mut wrong = endpoint(url.clone());
    wrong.ca_bundle_pem = Some(other_ca.pem());
    let err = read(&wrong).await.unwrap_err();
    assert_eq!(
        err.class(),
        FailureClass::Tls,
        "another CA is refused: {err}"
    );
    assert!(
        err.to_string()
            .contains("certificate is not signed by a CA this collector trusts"),
        "the reason names the certificate problem in words: {err}"
    );

    let default_roots = endpoint(url.clone());
    assert_eq!(
        read(&default_roots).await.unwrap_err().class(),
        FailureClass::Tls,
        "public roots do not vouch for a BMC CA"
    );

    // The right CA, the wrong name: reached as `localhost`, the certificate names 127.0.0.1.
    let mut misnamed = endpoint(url.replace("127.0.0.1", "localhost"));
    misnamed.ca_bundle_pem = Some(ca.pem());
    let err = read(&misnamed).await.unwrap_err();
    assert_eq!(err.class(), FailureClass::Tls, "{err}");
    assert!(
        err.to_string()
            .contains("certificate does not name the address"),
        "{err}"
    );

    let mut insecure = endpoint(url);
    insecure.insecure_skip_verify = true;
    assert!(read(&insecure).await.is_ok(), "explicit opt-out");
    std::fs::remove_dir_all(dir).unwrap();
}
