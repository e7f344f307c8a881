//! The cluster PKI behind `tern cluster init --out DIR --nodes a,b,c`: one ECDSA P-256 CA and,
//! per node, a certificate whose only subject alternative name is `<node>.node.tern`.
//!
//! The CA key is written only where the operator asks (`--ca-key FILE`, mode 0600), never into
//! the cluster directory that is copied to every node: with it, anyone could mint a node
//! identity. With it, `tern cluster add-node` issues a certificate for a new node that every
//! existing node trusts. The CA is also name-constrained to `node.tern`, so even a mis-issued
//! leaf cannot claim another DNS name.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::name::DNS_SUFFIX;
use crate::{ClusterError, NodeName};

pub const CA_FILE: &str = "ca.pem";

/// A node's credentials: its certificate, its key, and the cluster CA it trusts.
#[derive(Debug)]
pub struct NodeIdentity {
    pub name: NodeName,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub ca: CertificateDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl NodeIdentity {
    /// Builds an identity from PEM text without checking that `cert` is for `name`: peers
    /// check that themselves (and tests use this to build impostors). Prefer [`load`].
    pub fn from_pem(
        name: NodeName,
        cert_pem: &[u8],
        key_pem: &[u8],
        ca_pem: &[u8],
    ) -> Result<Self, ClusterError> {
        let bad = |what: &str, e: rustls::pki_types::pem::Error| ClusterError::BadPem {
            path: PathBuf::from(what),
            reason: e.to_string(),
        };
        Ok(Self {
            cert: CertificateDer::from_pem_slice(cert_pem).map_err(|e| bad("cert", e))?,
            key: PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("key", e))?,
            ca: CertificateDer::from_pem_slice(ca_pem).map_err(|e| bad("ca", e))?,
            name,
        })
    }
}

fn cert_file(dir: &Path, name: &NodeName) -> PathBuf {
    dir.join(format!("{name}.pem"))
}

fn key_file(dir: &Path, name: &NodeName) -> PathBuf {
    dir.join(format!("{name}.key"))
}

/// Creates `ca.pem` and `<node>.pem` / `<node>.key` for every node in `dir` (created if
/// missing), and throws the CA key away. See [`init_keeping_ca_key`].
pub fn init(dir: &Path, nodes: &[NodeName]) -> Result<Vec<PathBuf>, ClusterError> {
    init_keeping_ca_key(dir, nodes, None)
}

/// [`init`], also writing the CA key to `ca_key` (mode 0600) when given, so that nodes can
/// be added later ([`add_node`]). Refuses, before writing anything, if any of these files
/// already exists: silently replacing a CA would split the cluster.
pub fn init_keeping_ca_key(
    dir: &Path,
    nodes: &[NodeName],
    ca_key: Option<&Path>,
) -> Result<Vec<PathBuf>, ClusterError> {
    let mut seen = std::collections::BTreeSet::new();
    for n in nodes {
        if !seen.insert(n) {
            return Err(ClusterError::DuplicateNode(n.to_string()));
        }
    }
    let mut targets = vec![dir.join(CA_FILE)];
    targets.extend(ca_key.map(Path::to_owned));
    for n in nodes {
        targets.push(cert_file(dir, n));
        targets.push(key_file(dir, n));
    }
    if let Some(existing) = targets.iter().find(|p| p.exists()) {
        return Err(ClusterError::AlreadyExists(existing.clone()));
    }
    std::fs::create_dir_all(dir).map_err(|source| ClusterError::Io {
        path: dir.to_owned(),
        source,
    })?;

    let ca_key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let ca_params = ca_params(CLUSTER_CA)?;
    let ca_cert = ca_params.self_signed(&ca_key_pair)?;
    let ca_key_pem = ca_key_pair.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key_pair);

    let mut written = Vec::new();
    if let Some(path) = ca_key {
        write_new(path, ca_key_pem.as_bytes(), true, &mut written)?;
    }
    write_new(
        &dir.join(CA_FILE),
        ca_cert.pem().as_bytes(),
        false,
        &mut written,
    )?;
    for n in nodes {
        issue(dir, &issuer, n, Validity::Current, &mut written)?;
    }
    Ok(written)
}

/// Issues `<node>.pem` / `<node>.key` in `dir` for a node joining an existing cluster, signed
/// by the CA whose key `init_keeping_ca_key` wrote to `ca_key`. Refuses to overwrite, and
/// checks that the key belongs to the CA in `dir/ca.pem` (a key from another cluster would
/// issue certificates nobody here trusts).
pub fn add_node(dir: &Path, ca_key: &Path, node: &NodeName) -> Result<Vec<PathBuf>, ClusterError> {
    for path in [cert_file(dir, node), key_file(dir, node)] {
        if path.exists() {
            return Err(ClusterError::AlreadyExists(path));
        }
    }
    let issuer = issuer_from_key(&dir.join(CA_FILE), ca_key, CLUSTER_CA)?;
    let mut written = Vec::new();
    issue(dir, &issuer, node, Validity::Current, &mut written)?;
    Ok(written)
}

/// [`add_node`], but the certificate expired long ago (valid in the year 2000 only): what a
/// node that kept an old identity presents. Members must refuse it; the chaos tool's
/// impostors use it to check that they do.
pub fn add_expired_node(
    dir: &Path,
    ca_key: &Path,
    node: &NodeName,
) -> Result<Vec<PathBuf>, ClusterError> {
    for path in [cert_file(dir, node), key_file(dir, node)] {
        if path.exists() {
            return Err(ClusterError::AlreadyExists(path));
        }
    }
    let issuer = issuer_from_key(&dir.join(CA_FILE), ca_key, CLUSTER_CA)?;
    let mut written = Vec::new();
    issue(dir, &issuer, node, Validity::Expired, &mut written)?;
    Ok(written)
}

/// How long a node certificate is valid.
#[derive(Clone, Copy)]
enum Validity {
    /// rcgen's default: 1975 to 4096, so no clock, however wrong, finds it out of date.
    Current,
    /// The year 2000 only.
    Expired,
}

/// One of the two CAs: its common name and the DNS subtree its leaves are confined to.
#[derive(Clone, Copy)]
struct CaKind {
    common_name: &'static str,
    suffix: &'static str,
}

const CLUSTER_CA: CaKind = CaKind {
    common_name: "Tern cluster CA",
    suffix: DNS_SUFFIX,
};

const CLIENT_CA: CaKind = CaKind {
    common_name: "Tern client CA",
    suffix: CLIENT_DNS_SUFFIX,
};

/// A CA's parameters: identical when it is created and whenever it issues later.
fn ca_params(kind: CaKind) -> Result<CertificateParams, ClusterError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, kind.common_name);
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(kind.suffix.to_owned())],
        excluded_subtrees: Vec::new(),
    });
    Ok(ca_params)
}

/// The issuer of the CA certificate at `ca_path` whose key is at `ca_key`: refuses a key that
/// is not that CA's (a key from another cluster would issue certificates nobody here trusts).
fn issuer_from_key(
    ca_path: &Path,
    ca_key: &Path,
    kind: CaKind,
) -> Result<Issuer<'static, KeyPair>, ClusterError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| ClusterError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let key_pem = read(ca_key)?;
    let ca_key_pair = KeyPair::from_pem(&key_pem).map_err(|e| ClusterError::BadPem {
        path: ca_key.to_owned(),
        reason: e.to_string(),
    })?;
    let ca = CertificateDer::from_pem_slice(read(ca_path)?.as_bytes()).map_err(|e| {
        ClusterError::BadPem {
            path: ca_path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    // The CA certificate is ours (same subject, constraints, key usages), so rebuilding its
    // parameters with its key gives an issuer whose leaves chain to it: same issuer name,
    // same key identifier. Its public key (the EC point, last in the SubjectPublicKeyInfo)
    // must be the one in the CA file.
    let spki = webpki::anchor_from_trusted_cert(&ca)
        .map_err(|e| ClusterError::BadPeerCertificate(e.to_string()))?
        .subject_public_key_info
        .to_vec();
    if !spki.ends_with(ca_key_pair.public_key_raw()) {
        return Err(ClusterError::BadPem {
            path: ca_key.to_owned(),
            reason: format!("not the key of the CA in {}", ca_path.display()),
        });
    }
    Ok(Issuer::new(ca_params(kind)?, ca_key_pair))
}

/// The client CA's certificate, in the cluster directory (copied to every node): the client
/// API accepts certificates it issued, and no others.
pub const CLIENT_CA_FILE: &str = "client-ca.pem";

/// Every client certificate's DNS name ends in this; the client CA may issue no other.
pub const CLIENT_DNS_SUFFIX: &str = "client.tern";

/// Creates the client CA of the cluster in `dir`: `dir/client-ca.pem`, and its key at `key`
/// (mode 0600; keep it outside `dir`, which is copied to every node, and offline). Separate
/// from the cluster CA, so a client certificate can never join the mesh and a node
/// certificate is never a client credential. Refuses to overwrite either file.
pub fn init_client_ca(dir: &Path, key: &Path) -> Result<Vec<PathBuf>, ClusterError> {
    let cert_path = dir.join(CLIENT_CA_FILE);
    for path in [&cert_path, key] {
        if path.exists() {
            return Err(ClusterError::AlreadyExists(path.to_owned()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| ClusterError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = ca_params(CLIENT_CA)?.self_signed(&key_pair)?;
    let mut written = Vec::new();
    write_new(key, key_pair.serialize_pem().as_bytes(), true, &mut written)?;
    write_new(&cert_path, cert.pem().as_bytes(), false, &mut written)?;
    Ok(written)
}

/// Issues a client certificate whose only name is `<label>.client.tern`, signed by the
/// client CA of the cluster in `dir` (key at `ca_key`), as `out/<stem>.pem` and
/// `out/<stem>.key` (0600). What `label` means is the client API's business.
pub fn issue_client(
    dir: &Path,
    ca_key: &Path,
    label: &str,
    out: &Path,
    stem: &str,
) -> Result<Vec<PathBuf>, ClusterError> {
    let (cert_path, key_path) = (
        out.join(format!("{stem}.pem")),
        out.join(format!("{stem}.key")),
    );
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(ClusterError::AlreadyExists(path.to_owned()));
        }
    }
    let issuer = issuer_from_key(&dir.join(CLIENT_CA_FILE), ca_key, CLIENT_CA)?;
    std::fs::create_dir_all(out).map_err(|source| ClusterError::Io {
        path: out.to_owned(),
        source,
    })?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![format!("{label}.{CLIENT_DNS_SUFFIX}")])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, label);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    let mut written = Vec::new();
    write_new(&cert_path, cert.pem().as_bytes(), false, &mut written)?;
    write_new(
        &key_path,
        key.serialize_pem().as_bytes(),
        true,
        &mut written,
    )?;
    Ok(written)
}

/// The client CA of the cluster in `dir`, if one was created ([`init_client_ca`]).
pub fn load_client_ca(dir: &Path) -> Result<Option<CertificateDer<'static>>, ClusterError> {
    let path = dir.join(CLIENT_CA_FILE);
    match std::fs::read(&path) {
        Ok(pem) => {
            CertificateDer::from_pem_slice(&pem)
                .map(Some)
                .map_err(|e| ClusterError::BadPem {
                    path,
                    reason: e.to_string(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ClusterError::Io { path, source }),
    }
}

/// The labels of a client certificate: its DNS names under `client.tern`, without that
/// suffix. For a certificate rustls has already verified against the client CA (which can
/// issue no other names): this reads who it is, it does not check that it is valid.
pub fn client_labels(cert: &CertificateDer<'_>) -> Result<Vec<String>, ClusterError> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| ClusterError::BadPeerCertificate(e.to_string()))?;
    let suffix = format!(".{CLIENT_DNS_SUFFIX}");
    Ok(ee
        .valid_dns_names()
        .filter_map(|name| name.strip_suffix(&suffix).map(str::to_owned))
        .collect())
}

/// Writes node `n`'s certificate (signed by `issuer`) and new key into `dir`.
fn issue(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    n: &NodeName,
    validity: Validity,
    written: &mut Vec<PathBuf>,
) -> Result<(), ClusterError> {
    {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![n.dns_name()])?;
        if let Validity::Expired = validity {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, n.as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every node is both a TLS server (accepting) and a TLS client (dialling).
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, issuer)?;
        write_new(&cert_file(dir, n), cert.pem().as_bytes(), false, written)?;
        write_new(
            &key_file(dir, n),
            key.serialize_pem().as_bytes(),
            true,
            written,
        )?;
    }
    Ok(())
}

/// Writes a file that must not exist yet (`create_new` closes the check-then-write race).
fn write_new(
    path: &Path,
    bytes: &[u8],
    secret: bool,
    written: &mut Vec<PathBuf>,
) -> Result<(), ClusterError> {
    let io = |source| ClusterError::Io {
        path: path.to_owned(),
        source,
    };
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Keys readable by the owner only.
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ClusterError::AlreadyExists(path.to_owned())
        } else {
            io(e)
        }
    })?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    written.push(path.to_owned());
    Ok(())
}

/// Loads node `name`'s identity from `dir` and checks that its certificate really is for
/// `name`, so a mixed-up file fails here rather than at every peer.
pub fn load(dir: &Path, name: &NodeName) -> Result<NodeIdentity, ClusterError> {
    let read = |path: PathBuf| {
        std::fs::read(&path)
            .map(|b| (path.clone(), b))
            .map_err(|source| ClusterError::Io { path, source })
    };
    let bad = |path: &Path, e: rustls::pki_types::pem::Error| ClusterError::BadPem {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let (cp, cert) = read(cert_file(dir, name))?;
    let (kp, key) = read(key_file(dir, name))?;
    let (ap, ca) = read(dir.join(CA_FILE))?;
    let id = NodeIdentity {
        name: name.clone(),
        cert: CertificateDer::from_pem_slice(&cert).map_err(|e| bad(&cp, e))?,
        key: PrivateKeyDer::from_pem_slice(&key).map_err(|e| bad(&kp, e))?,
        ca: CertificateDer::from_pem_slice(&ca).map_err(|e| bad(&ap, e))?,
    };
    check_cert_name(&id.cert, name)?;
    Ok(id)
}

/// Checks that `cert` carries the DNS name of node `name`. Chain validation is rustls's job;
/// this is the name binding on top of it.
pub(crate) fn check_cert_name(
    cert: &CertificateDer<'_>,
    name: &NodeName,
) -> Result<(), ClusterError> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| ClusterError::BadPeerCertificate(e.to_string()))?;
    let server_name = ServerName::try_from(name.dns_name())
        .map_err(|e| ClusterError::BadPeerCertificate(e.to_string()))?;
    ee.verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| ClusterError::IdentityMismatch {
            expected: name.to_string(),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(s: &[&str]) -> Vec<NodeName> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn init_creates_files_refuses_overwrite_and_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let nodes = names(&["a", "b", "c"]);
        let written = init(&out, &nodes).unwrap();
        assert_eq!(written.len(), 7);
        for f in [
            "ca.pem", "a.pem", "a.key", "b.pem", "b.key", "c.pem", "c.key",
        ] {
            assert!(out.join(f).is_file(), "{f}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("a.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key must not be group/world readable");
        }
        let before = std::fs::read(out.join("ca.pem")).unwrap();
        let err = init(&out, &names(&["d"])).unwrap_err();
        assert!(matches!(err, ClusterError::AlreadyExists(p) if p.ends_with("ca.pem")));
        assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), before);
        assert!(!out.join("d.pem").exists(), "nothing written on refusal");

        let b = load(&out, &nodes[1]).unwrap();
        assert_eq!(b.name, nodes[1]);
        check_cert_name(&b.cert, &nodes[1]).unwrap();
        assert!(matches!(
            check_cert_name(&b.cert, &nodes[2]),
            Err(ClusterError::IdentityMismatch { .. })
        ));
        let missing = load(&out, &"zz".parse().unwrap()).unwrap_err();
        assert!(matches!(missing, ClusterError::Io { .. }));
    }

    #[test]
    fn load_rejects_a_cert_for_another_node() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &names(&["a", "b"])).unwrap();
        // Operator error: b's files copied over a's.
        std::fs::copy(dir.path().join("b.pem"), dir.path().join("a2.pem")).unwrap();
        std::fs::copy(dir.path().join("b.key"), dir.path().join("a2.key")).unwrap();
        let err = load(dir.path(), &"a2".parse().unwrap()).unwrap_err();
        assert!(matches!(err, ClusterError::IdentityMismatch { .. }));
    }

    #[test]
    fn duplicate_and_garbage_inputs_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            init(dir.path(), &names(&["a", "a"])),
            Err(ClusterError::DuplicateNode(_))
        ));
        std::fs::write(dir.path().join("x.pem"), b"not pem").unwrap();
        std::fs::write(dir.path().join("x.key"), b"not pem").unwrap();
        std::fs::write(dir.path().join("ca.pem"), b"not pem").unwrap();
        assert!(matches!(
            load(dir.path(), &"x".parse().unwrap()),
            Err(ClusterError::BadPem { .. })
        ));
    }

    #[test]
    fn client_certificates_carry_their_label_and_only_the_client_cas_key_issues_them() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let key = dir.path().join("client-ca.key");
        init(&pki, &names(&["a"])).unwrap();
        assert_eq!(load_client_ca(&pki).unwrap(), None, "none until created");
        init_client_ca(&pki, &key).unwrap();
        assert!(matches!(
            init_client_ca(&pki, &dir.path().join("again.key")),
            Err(ClusterError::AlreadyExists(_))
        ));
        let client_ca = load_client_ca(&pki).unwrap().unwrap();
        let cluster_ca = load(&pki, &names(&["a"])[0]).unwrap().ca;
        assert_ne!(client_ca, cluster_ca, "two separate CAs");

        let out = dir.path().join("clients");
        issue_client(&pki, &key, "alice.developer.acme", &out, "alice").unwrap();
        let cert =
            CertificateDer::from_pem_slice(&std::fs::read(out.join("alice.pem")).unwrap()).unwrap();
        assert_eq!(client_labels(&cert).unwrap(), ["alice.developer.acme"]);
        // A node certificate has no client label.
        let node = load(&pki, &names(&["a"])[0]).unwrap().cert;
        assert!(client_labels(&node).unwrap().is_empty());
        assert!(matches!(
            issue_client(&pki, &key, "alice.developer.acme", &out, "alice"),
            Err(ClusterError::AlreadyExists(_))
        ));
        // The cluster CA's key (or any other) cannot issue client certificates.
        let cluster_key = dir.path().join("ca.key");
        let other = dir.path().join("other");
        init_keeping_ca_key(&other, &names(&["x"]), Some(&cluster_key)).unwrap();
        assert!(matches!(
            issue_client(&pki, &cluster_key, "eve.admin.default", &out, "eve"),
            Err(ClusterError::BadPem { .. })
        ));
    }
}
