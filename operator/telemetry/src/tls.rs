//! TLS of the telemetry endpoint. The certificate is read from its files again when they change
//! (cert-manager renews it, the chart signs a new one on every upgrade, the kubelet swaps the
//! mounted Secret), so a rotated certificate is served without a restart; connections already
//! open keep theirs. Handshakes run apart from the accept loop with a deadline, so a client that
//! opens a connection and says nothing holds no one else up.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How often the operator reads its certificate files again (the kubelet updates a mounted
/// Secret within about a minute of its change).
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// Why the certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no certificate in the PEM of the telemetry endpoint")]
    NoCertificate,
    #[error("the telemetry endpoint's certificate: {0}")]
    Pem(String),
    #[error("the telemetry endpoint's key: {0}")]
    Key(rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// Where the operator's certificate and key (PEM) come from.
#[derive(Clone)]
pub enum ServerTls {
    /// Given once (tests).
    Pem { cert: String, key: String },
    /// Files, read again `every` so a change is served.
    Files {
        cert: PathBuf,
        key: PathBuf,
        every: Duration,
    },
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pem { .. } => f.write_str("ServerTls::Pem"),
            Self::Files { cert, .. } => write!(f, "ServerTls::Files({})", cert.display()),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses a certificate chain and its key into what rustls serves.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(TlsError::Key)?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The certificate served now, replaced when its files change.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|k| k.clone())
    }
}

/// An acceptor for gRPC (HTTP/2 only) over `tls`; see [`acceptor_for`].
pub fn acceptor(tls: &ServerTls) -> Result<TlsAcceptor, TlsError> {
    acceptor_for(tls, &[b"h2"])
}

/// An acceptor for `tls` offering the `alpn` protocols, and for files a task that reloads
/// them (it ends with the acceptor).
pub fn acceptor_for(tls: &ServerTls, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
    let (cert, key) = match tls {
        ServerTls::Pem { cert, key } => (cert.as_bytes().to_vec(), key.as_bytes().to_vec()),
        ServerTls::Files { cert, key, .. } => (read(cert)?, read(key)?),
    };
    let current = Arc::new(Current(RwLock::new(Arc::new(certified_key(&cert, &key)?))));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Config)?
    .with_no_client_auth()
    .with_cert_resolver(current.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if let ServerTls::Files {
        cert: c,
        key: k,
        every,
    } = tls
    {
        let files = (c.clone(), k.clone());
        tokio::spawn(reload(Arc::downgrade(&current), files, *every, (cert, key)));
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Reads the files every `every` and swaps in a changed pair that parses; stops when the
/// server is gone.
async fn reload(
    current: std::sync::Weak<Current>,
    (cert, key): (PathBuf, PathBuf),
    every: Duration,
    mut seen: (Vec<u8>, Vec<u8>),
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(current) = current.upgrade() else {
            return;
        };
        let pair = match (read(&cert), read(&key)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "telemetry certificate not read; serving the one loaded");
                continue;
            }
        };
        if pair == seen {
            continue;
        }
        match certified_key(&pair.0, &pair.1) {
            Ok(new) => {
                if let Ok(mut slot) = current.0.write() {
                    *slot = Arc::new(new);
                    tracing::info!(cert = %cert.display(), "telemetry certificate reloaded");
                }
                seen = pair;
            }
            // Mid-swap (certificate of the new pair, key of the old): next time.
            Err(e) => {
                tracing::warn!(error = %e, "telemetry certificate changed but does not load yet");
            }
        }
    }
}

/// TLS connections from `listener`, each handshake in a task of its own with a deadline.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send(Ok(tls)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
