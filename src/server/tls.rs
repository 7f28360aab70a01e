//! Optional TLS on `agent.listen` (`[api] tls_cert_file`, `tls_key_file`): rustls on
//! ring, the binary's one crypto provider. The pair is read when the config is checked,
//! again at start, and whenever either file changes (polled every [`RELOAD_EVERY`]),
//! so a renewed certificate (certbot, cert-manager) is served without a restart. A pair
//! that does not load (say, the certificate written and the key not yet) is logged and
//! the previous pair kept.

use std::io;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::TlsFiles;

/// How often the certificate and key files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// rustls 0.23.48 deprecates ring's provider because it has no post-quantum key
/// exchange (X25519MLKEM768); aws-lc-rs has one but brings a cmake and C build, which
/// this build left out. Classical X25519/P-256 key exchange, as with ring until now.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a certificate chain and its key; the error names the files, never
/// their contents.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (cert_pem, key_pem) = (read(&files.cert)?, read(&files.key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!("no private key in {}", files.key.display()),
        e => format!("{}: {e}", files.key.display()),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "the private key in {} does not match the certificate in {}",
            files.key.display(),
            files.cert.display()
        ),
        e => format!("{}: {e}", files.key.display()),
    })
}

/// What identifies a version of a file: a rewrite or a swapped symlink changes it.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Serves the latest pair that loaded.
#[derive(Debug)]
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<(Stamp, Stamp)>,
}

impl Reloading {
    /// Loads the pair.
    pub fn start(files: &TlsFiles) -> io::Result<Arc<Reloading>> {
        let seen = (stamp(&files.cert), stamp(&files.key));
        let pair = load(files).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Arc::new(Reloading {
            files: files.clone(),
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(seen),
        }))
    }

    /// Loads the pair again if either file changed since the last look; whether a new
    /// pair is now served.
    pub fn reload_if_changed(&self) -> bool {
        let now = (stamp(&self.files.cert), stamp(&self.files.key));
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return false;
            }
            // A pair that fails is not retried until a file changes again.
            *seen = now;
        }
        match load(&self.files) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate changed but does not load; serving the previous one");
                false
            }
        }
    }

    /// The acceptor for connections: TLS 1.2 and 1.3, HTTP/1.1.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring provides the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// Checks the files every [`RELOAD_EVERY`], forever.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reload_if_changed();
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}
