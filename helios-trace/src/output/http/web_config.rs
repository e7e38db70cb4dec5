//! `serve --web-config-file FILE`: TLS and basic authentication in the format Prometheus
//! exporters share (prometheus/exporter-toolkit's web configuration, as node_exporter reads it):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # paths relative to this file's directory
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), VerifyClientCertIfGiven
//!   client_ca_file: clients.crt
//!   min_version: TLS12           # or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...       # bcrypt hashes
//! ```
//!
//! As exporter-toolkit does, unknown keys are an error, client CAs without a client auth policy
//! are an error, and a password is checked against its bcrypt hash (a success remembered, so a
//! scrape every few seconds does not cost a bcrypt each). What it has and this does not
//! (inline certificates, cipher suites, curves, `http_server_config`, `RequestClientCert` and
//! `RequireAnyClientCert`, which verify nothing) is refused by name, never ignored.
//!
//! The file and the files it names are watched ([`Fingerprint`]): when one changes, it is read
//! again; a bad new version is logged and counted and the old configuration kept.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;
use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};

/// What a web configuration file asks for; the default is plain HTTP without authentication.
#[derive(Clone, Default)]
pub(crate) struct WebConfig {
    pub(crate) tls: Option<Arc<ServerConfig>>,
    /// User → bcrypt hash; empty: no authentication.
    pub(crate) users: BTreeMap<String, String>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebFile {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    min_version: Option<String>,
}

/// How a client certificate is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientAuth {
    None,
    /// Verified against the client CAs when the client sends one (exporter-toolkit's
    /// VerifyClientCertIfGiven).
    IfGiven,
    /// Required and verified against the client CAs.
    Required,
}

/// The files a configuration was read from, with what identifies each version of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint(Vec<(PathBuf, Option<Stamp>)>);

/// A file's modification time (seconds, nanoseconds), inode and size.
type Stamp = (i64, i64, u64, u64);

impl Fingerprint {
    fn of(paths: Vec<PathBuf>) -> Fingerprint {
        Fingerprint(
            paths
                .into_iter()
                .map(|path| {
                    let stamp =
                        fs::metadata(&path).ok().map(|m| (m.mtime(), m.mtime_nsec(), m.ino(), m.size()));
                    (path, stamp)
                })
                .collect(),
        )
    }

    /// The same files as they are now.
    pub(crate) fn now(&self) -> Fingerprint {
        Fingerprint::of(self.0.iter().map(|(path, _)| path.clone()).collect())
    }
}

/// Read and check `path`: the configuration and what it was read from, or one line saying
/// what is wrong.
pub(crate) fn load(path: &Path) -> Result<(WebConfig, Fingerprint), String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let (config, files) = parse(&text, dir).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut watched = vec![path.to_path_buf()];
    watched.extend(files);
    Ok((config, Fingerprint::of(watched)))
}

/// The configuration in `text`, its relative paths taken from `dir`; the files it names.
fn parse(text: &str, dir: &Path) -> Result<(WebConfig, Vec<PathBuf>), String> {
    // An empty file is an empty configuration, as for exporter-toolkit.
    let file: WebFile = if text.trim().is_empty() {
        WebFile { tls_server_config: None, basic_auth_users: None }
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string().replace('\n', " "))?
    };
    let users = file.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        if user.contains(':') {
            return Err(format!(
                "basic_auth_users: user {user:?} has a ':', which basic authentication cannot carry"
            ));
        }
        hash.parse::<bcrypt::HashParts>()
            .map_err(|e| format!("basic_auth_users: {user}'s password is not a bcrypt hash ({e})"))?;
    }
    let mut files = Vec::new();
    let tls = match file.tls_server_config {
        None => None,
        Some(tls) => Some(Arc::new(tls_config(tls, dir, &mut files)?)),
    };
    Ok((WebConfig { tls, users }, files))
}

fn tls_config(tls: TlsFile, dir: &Path, files: &mut Vec<PathBuf>) -> Result<ServerConfig, String> {
    let mut path = |p: PathBuf| {
        let p = dir.join(p);
        files.push(p.clone());
        p
    };
    let (Some(cert_file), Some(key_file)) = (tls.cert_file, tls.key_file) else {
        return Err("tls_server_config needs cert_file and key_file".into());
    };
    let (cert_file, key_file) = (path(cert_file), path(key_file));
    let client_auth = match tls.client_auth_type.as_deref() {
        None | Some("" | "NoClientCert") => ClientAuth::None,
        Some("VerifyClientCertIfGiven") => ClientAuth::IfGiven,
        Some("RequireAndVerifyClientCert") => ClientAuth::Required,
        Some(other @ ("RequestClientCert" | "RequireAnyClientCert")) => {
            return Err(format!(
                "client_auth_type {other} is not supported: it accepts certificates without verifying them (use RequireAndVerifyClientCert or VerifyClientCertIfGiven)"
            ));
        }
        Some(other) => {
            return Err(format!(
                "client_auth_type {other:?} is not one of NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ));
        }
    };
    let client_ca_file = tls.client_ca_file.map(&mut path);
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version.as_deref() {
        None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some("TLS13") => &[&rustls::version::TLS13],
        Some(other) => {
            return Err(format!("min_version {other:?}: TLS12 or TLS13 (older versions are not offered)"));
        }
    };
    let certs = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("cert_file {}: no certificate in it", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| format!("key_file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match (client_auth, client_ca_file) {
        (ClientAuth::None, None) => builder.with_no_client_auth(),
        (ClientAuth::None, Some(_)) => {
            return Err(
                "client_ca_file is set without a client_auth_type that verifies client certificates".into()
            );
        }
        (_, None) => return Err(format!("client_auth_type {client_auth:?} needs client_ca_file")),
        (auth, Some(ca_file)) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(&ca_file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("client_ca_file {}: {e}", ca_file.display()))?;
            for ca in cas {
                roots.add(ca).map_err(|e| format!("client_ca_file {}: {e}", ca_file.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier =
                if auth == ClientAuth::IfGiven { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(
                verifier.build().map_err(|e| format!("client_ca_file {}: {e}", ca_file.display()))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert_file {} and key_file {}: {e}", cert_file.display(), key_file.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether `password` is `user`'s, by the configured bcrypt hash. For an unknown user a hash is
/// still checked, so that the time taken does not tell which users exist.
pub(crate) fn verify(users: &BTreeMap<String, String>, user: &str, password: &str) -> bool {
    match users.get(user) {
        Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        None => {
            if let Some(any) = users.values().next() {
                let _ = bcrypt::verify(password, any);
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("/nonexistent")).unwrap_err()
    }

    #[test]
    fn users_and_their_hashes() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let (config, files) =
            parse(&format!("basic_auth_users:\n  prometheus: {hash}\n"), Path::new("/")).unwrap();
        assert!(config.tls.is_none() && files.is_empty());
        assert!(verify(&config.users, "prometheus", "s3cret"));
        assert!(!verify(&config.users, "prometheus", "wrong"));
        assert!(!verify(&config.users, "nobody", "s3cret"));
        assert!(parse_err("basic_auth_users:\n  prometheus: plaintext\n").contains("not a bcrypt hash"));
        let (empty, _) = parse("", Path::new("/")).unwrap();
        assert!(empty.users.is_empty() && empty.tls.is_none());
    }

    #[test]
    fn what_is_not_supported_is_refused_by_name() {
        assert!(
            parse_err("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n")
                .contains("cipher_suites")
        );
        assert!(parse_err("http_server_config:\n  http2: false\n").contains("http_server_config"));
        assert!(parse_err("tls_server_config:\n  cert_file: a\n").contains("needs cert_file and key_file"));
        assert!(
            parse_err("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n")
                .contains("without verifying")
        );
        assert!(
            parse_err("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n")
                .contains("min_version")
        );
        // Relative paths are the configuration file's directory's.
        assert!(
            parse_err("tls_server_config:\n  cert_file: a.crt\n  key_file: b\n")
                .contains("/nonexistent/a.crt")
        );
        assert!(!parse_err("tls_server_config: [").contains('\n'), "one line");
    }

    #[test]
    fn client_cas_need_a_policy_and_policies_need_client_cas() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        fs::write(dir.path().join("s.crt"), cert.pem()).unwrap();
        fs::write(dir.path().join("s.key"), key.serialize_pem()).unwrap();
        let base = "tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n";
        let (config, files) = parse(base, dir.path()).unwrap();
        assert!(config.tls.is_some());
        assert_eq!(files, vec![dir.path().join("s.crt"), dir.path().join("s.key")]);
        let err = parse(&format!("{base}  client_ca_file: s.crt\n"), dir.path()).unwrap_err();
        assert!(err.contains("without a client_auth_type"), "{err}");
        let err = parse(&format!("{base}  client_auth_type: RequireAndVerifyClientCert\n"), dir.path())
            .unwrap_err();
        assert!(err.contains("needs client_ca_file"), "{err}");
        let both = format!("{base}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: s.crt\n");
        assert!(parse(&both, dir.path()).is_ok());
        fs::write(dir.path().join("s.key"), "not a key").unwrap();
        assert!(parse(base, dir.path()).unwrap_err().contains("key_file"));
    }
}
