//! Test certificates made on the fly with rcgen (never checked in): CAs,
//! server certificates for localhost/127.0.0.1, client certificates, and
//! expired ones, written as PEM files into a directory.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A CA that signs certificates; its certificate is at `pem`.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: PathBuf,
}

/// A certificate and its key, as files.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write PEM");
    p
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("zeoraid test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        let pem = write(dir, &format!("{name}-ca.pem"), &cert.pem());
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn issue(&self, dir: &Path, name: &str, server: bool, expired: bool) -> Pair {
        let sans = if server {
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("zeoraid test {name}"));
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        // Python's ssl (ZEO sets VERIFY_X509_STRICT) wants the issuer's key
        // identifier in issued certificates.
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pair {
            cert: write(dir, &format!("{name}.pem"), &cert.pem()),
            key: write(dir, &format!("{name}.key"), &key.serialize_pem()),
        }
    }

    /// A server certificate for localhost and 127.0.0.1.
    pub fn server(&self, dir: &Path, name: &str) -> Pair {
        self.issue(dir, name, true, false)
    }

    /// A server certificate that expired in 2021.
    pub fn expired_server(&self, dir: &Path, name: &str) -> Pair {
        self.issue(dir, name, true, true)
    }

    /// A client certificate.
    pub fn client(&self, dir: &Path, name: &str) -> Pair {
        self.issue(dir, name, false, false)
    }
}
