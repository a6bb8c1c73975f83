//! The rustls side of TLS (feature `tls`): configurations from PEM files and
//! handshake failures explained.

use super::{date_problem, now_unix, validity, ClientFiles, ServerFiles, ServerTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// System CA bundles tried when a backend's `ca` is not set.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path)
        .map_err(|e| format!("cannot read TLS certificate file {}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&data).collect();
    let certs = certs.map_err(|e| {
        format!(
            "TLS certificate file {} is not valid PEM: {e}",
            path.display()
        )
    })?;
    if certs.is_empty() {
        let hint = if PrivateKeyDer::from_pem_slice(&data).is_ok() {
            " (it holds a private key: swap certificate and key?)"
        } else {
            ""
        };
        return Err(format!(
            "{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"){hint}",
            path.display()
        ));
    }
    for c in &certs {
        if validity(c).is_none() {
            return Err(format!(
                "{} holds a PEM block that is not an X.509 certificate",
                path.display()
            ));
        }
    }
    Ok(certs)
}

/// Read the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let data = std::fs::read(path)
        .map_err(|e| format!("cannot read TLS key file {}: {e}", path.display()))?;
    if data.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(format!(
            "{} holds an encrypted private key, which zeoraid cannot use: store it decrypted (`openssl pkey -in KEY -out KEY.plain`) in a file only zeoraid's user can read",
            path.display()
        ));
    }
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| {
        let hint = if CertificateDer::pem_slice_iter(&data).any(|c| c.is_ok()) {
            " (it holds a certificate: swap certificate and key?)"
        } else {
            ""
        };
        format!(
            "{} holds no PEM private key (PKCS#8, RSA or EC): {e}{hint}",
            path.display()
        )
    })
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in load_certs(path)? {
        store
            .add(c)
            .map_err(|e| format!("CA file {}: unusable certificate: {e}", path.display()))?;
    }
    Ok(store)
}

fn explain_config_error(e: rustls::Error, cert: &Path, key: &Path) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "TLS key {} does not belong to the certificate {} (wrong key file?)",
            key.display(),
            cert.display()
        ),
        other => format!(
            "TLS certificate {} with key {}: {other}",
            cert.display(),
            key.display()
        ),
    }
}

/// Build the server's configuration from its files.
pub fn load_server(files: &ServerFiles) -> Result<ServerTls, String> {
    let certs = load_certs(&files.certificate)?;
    let key = load_key(&files.key)?;
    let dates = validity(&certs[0]);
    if let Some(problem) = dates.and_then(|d| date_problem(&files.certificate, d, now_unix())) {
        log::error!(
            "{problem}: clients will refuse the connection; renew it and reload (SIGHUP or `zeoraid ctl reload`)"
        );
    }
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| format!("client CA file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| explain_config_error(e, &files.certificate, &files.key))?;
    Ok(ServerTls {
        config: Arc::new(config),
        files: files.clone(),
        not_after: dates.map(|d| d.1),
    })
}

/// Build a backend connection's configuration from its files.
pub fn load_client(files: &ClientFiles) -> Result<Arc<ClientConfig>, String> {
    let roots = match &files.ca {
        Some(ca) => roots(ca)?,
        None => {
            let bundle = SYSTEM_BUNDLES
                .iter()
                .map(Path::new)
                .find(|p| p.exists())
                .ok_or_else(|| {
                    "no `ca` is set and no system CA bundle was found; set `ca` to the file of the CA that signed the server's certificate".to_string()
                })?;
            roots(bundle)?
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots);
    let config = match (&files.certificate, &files.key) {
        (Some(cert), Some(key)) => {
            let certs = load_certs(cert)?;
            if let Some(problem) =
                validity(&certs[0]).and_then(|d| date_problem(cert, d, now_unix()))
            {
                return Err(format!("{problem}: renew it (the server would refuse it)"));
            }
            builder
                .with_client_auth_cert(certs, load_key(key)?)
                .map_err(|e| explain_config_error(e, cert, key))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("a client certificate needs both `certificate` and `key`".to_string()),
    };
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry.
pub fn server_name(
    configured: Option<&str>,
    host: Option<&str>,
) -> Result<ServerName<'static>, String> {
    let name = configured.or(host).ok_or_else(|| {
        "TLS over a Unix socket needs `server-hostname` (the name in the server's certificate)"
            .to_string()
    })?;
    ServerName::try_from(name.to_string())
        .map_err(|e| format!("{name:?} is not a valid TLS server name: {e}"))
}

/// A handshake failure in words an operator acts on (pure).
pub fn explain(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::NoCertificatesPresented => {
            "the client presented no certificate, and `client-ca` requires one".into()
        }
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                "its certificate is not signed by a CA we trust (check `client-ca` / `ca`)".into()
            }
            C::Expired | C::ExpiredContext { .. } => "its certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "its certificate is not valid yet (check the clocks)".into()
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "its certificate is not valid for the server name (set `server-hostname`)".into()
            }
            other => format!("invalid certificate: {other:?}"),
        },
        E::AlertReceived(a) => match a {
            A::CertificateRequired => {
                "the server requires a client certificate (set `certificate` and `key`)".into()
            }
            A::UnknownCA | A::BadCertificate => {
                "the peer does not trust our certificate (signed by another CA?)".into()
            }
            A::CertificateExpired => "the peer says our certificate has expired".into(),
            other => format!("the peer refused the handshake (alert {other:?})"),
        },
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "it does not speak TLS (a plaintext client on the TLS port?)".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let table = [
            (E::NoCertificatesPresented, "presented no certificate"),
            (
                E::InvalidCertificate(C::UnknownIssuer),
                "not signed by a CA we trust",
            ),
            (E::InvalidCertificate(C::Expired), "has expired"),
            (E::InvalidCertificate(C::NotValidForName), "server-hostname"),
            (
                E::AlertReceived(A::CertificateRequired),
                "requires a client certificate",
            ),
            (
                E::AlertReceived(A::UnknownCA),
                "does not trust our certificate",
            ),
            (
                E::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "plaintext client",
            ),
        ];
        for (e, want) in table {
            let s = explain(&e);
            assert!(s.contains(want), "{e:?}: {s}");
        }
    }
}
