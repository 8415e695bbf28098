//! The webhook server's certificates: a CA and a serving certificate the operator creates and
//! rotates itself in a Secret that every replica shares, or files it reloads when they change.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls::{
    RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::error::Result;

/// The CA's lifetime: ten years (the serving certificate rotates; the CA stays in the
/// `caBundle`).
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The serving certificate's lifetime: 90 days, renewed when a third of it is left.
pub const DEFAULT_SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// How often certificate files are checked for changes.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

const CA_CN: &str = "kuberator-webhook-ca";
const ISSUED_AT: &str = "webhook.kuberator.dev/issued-at";
const NOT_AFTER: &str = "webhook.kuberator.dev/not-after";
const NAMES: &str = "webhook.kuberator.dev/names";
/// Accepted clock skew: certificates are valid from one minute before they were issued.
const SKEW: Duration = Duration::from_secs(60);

/// Where the webhook server's certificate comes from.
///
/// - [`Certificates::secret`] (the default of every [`WebhookServer`](super::WebhookServer)):
///   the operator loads the CA and serving certificate from the Secret, or creates them there
///   (so every replica serves the same certificate), writes the CA into the `caBundle` of its
///   webhook configurations and renews the serving certificate when a third of its lifetime is
///   left. The CA does not change, so the new certificate is trusted before it is served.
/// - [`Certificates::files`]: PEM files that something else writes (cert-manager, a mounted
///   Secret); they are read again when they change. With [`ca_file`](Certificates::ca_file)
///   the CA is written into the `caBundle`; without, the `caBundle` is left to its owner
///   (e.g. cert-manager's CA injector).
///
/// ```
/// use std::time::Duration;
/// use kuberator::webhook::Certificates;
///
/// let managed = Certificates::secret("shop", "websites-webhook-tls")
///     .serving_validity(Duration::from_secs(30 * 24 * 3600));
/// let mounted = Certificates::files("/tls/tls.crt", "/tls/tls.key").ca_file("/tls/ca.crt");
/// # let _ = (managed, mounted);
/// ```
#[derive(Clone, Debug)]
pub struct Certificates {
    pub(crate) source: Source,
}

#[derive(Clone, Debug)]
pub(crate) enum Source {
    Secret {
        namespace: String,
        name: String,
        serving_validity: Duration,
        ca_validity: Duration,
    },
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
        interval: Duration,
    },
}

impl Certificates {
    /// A CA and serving certificate kept in the Secret `namespace/name` (created when missing).
    pub fn secret(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Certificates {
            source: Source::Secret {
                namespace: namespace.into(),
                name: name.into(),
                serving_validity: DEFAULT_SERVING_VALIDITY,
                ca_validity: DEFAULT_CA_VALIDITY,
            },
        }
    }

    /// The serving certificate and key in PEM files, read again when they change.
    pub fn files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Certificates {
            source: Source::Files {
                cert: cert.into(),
                key: key.into(),
                ca: None,
                interval: DEFAULT_RELOAD_INTERVAL,
            },
        }
    }

    /// With [`files`](Certificates::files): the CA (PEM) to write into the `caBundle`.
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        if let Source::Files { ca, .. } = &mut self.source {
            *ca = Some(path.into());
        }
        self
    }

    /// With [`files`](Certificates::files): how often the files are checked (default
    /// [`DEFAULT_RELOAD_INTERVAL`]).
    #[must_use]
    pub fn reload_interval(mut self, every: Duration) -> Self {
        if let Source::Files { interval, .. } = &mut self.source {
            *interval = every.max(Duration::from_millis(100));
        }
        self
    }

    /// With [`secret`](Certificates::secret): the serving certificate's lifetime (default
    /// [`DEFAULT_SERVING_VALIDITY`]); it is renewed when a third of it is left.
    #[must_use]
    pub fn serving_validity(mut self, validity: Duration) -> Self {
        if let Source::Secret {
            serving_validity, ..
        } = &mut self.source
        {
            *serving_validity = validity.max(Duration::from_secs(3));
        }
        self
    }

    /// With [`secret`](Certificates::secret): the CA's lifetime when it is created (default
    /// [`DEFAULT_CA_VALIDITY`]).
    #[must_use]
    pub fn ca_validity(mut self, validity: Duration) -> Self {
        if let Source::Secret { ca_validity, .. } = &mut self.source {
            *ca_validity = validity.max(Duration::from_secs(60));
        }
        self
    }
}

/// A serving certificate with its key and the CA that signed it (PEM).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Material {
    pub(crate) ca_pem: Option<String>,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    /// Unix seconds (0 for files).
    pub(crate) issued_at: i64,
    /// Unix seconds (0 for files).
    pub(crate) not_after: i64,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("issued_at", &self.issued_at)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Material {
    /// When a managed certificate is renewed: when a third of its lifetime is left.
    pub(crate) fn renew_at(&self) -> i64 {
        self.issued_at + (self.not_after - self.issued_at) * 2 / 3
    }

    /// The certified key rustls serves.
    /// Checks what the API server will check: that the serving certificate, for `host`, is
    /// signed by the CA (when the material has one) and valid now. The key is checked against
    /// the certificate by [`certified_key`](Material::certified_key).
    pub(crate) fn check_trusted(
        &self,
        host: &str,
        provider: &Arc<CryptoProvider>,
    ) -> anyhow::Result<()> {
        let Some(ca_pem) = &self.ca_pem else {
            return Ok(());
        };
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let ca = ca.map_err(|error| anyhow!("reading the CA (PEM): {error}"))?;
            roots
                .add(ca)
                .map_err(|error| anyhow!("reading the CA: {error}"))?;
        }
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|error| anyhow!("reading the serving certificate (PEM): {error}"))?;
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(anyhow!("the serving certificate holds no PEM certificate"));
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|error| anyhow!("`{host}` is no name a certificate is for: {error}"))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|error| anyhow!("reading the CA: {error}"))?;
        verifier
            .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
            .map_err(|error| {
                anyhow!("the serving certificate is not trusted for `{host}`: {error}")
            })?;
        Ok(())
    }

    pub(crate) fn certified_key(&self, provider: &CryptoProvider) -> Result<CertifiedKey> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|error| anyhow!("reading the webhook serving certificate (PEM): {error}"))?;
        if chain.is_empty() {
            return Err(anyhow!("the webhook serving certificate holds no PEM certificate").into());
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|error| anyhow!("reading the webhook serving key (PEM): {error}"))?;
        CertifiedKey::from_der(chain, key, provider).map_err(|error| {
            anyhow!("the webhook serving key does not fit its certificate: {error}").into()
        })
    }
}

/// What rustls serves: swapped in place when the certificate changes, so new handshakes get
/// the new certificate and open connections keep theirs.
#[derive(Default)]
pub(crate) struct ServingCert {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert").finish_non_exhaustive()
    }
}

impl ServingCert {
    pub(crate) fn install(&self, key: CertifiedKey) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(key));
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn offset(unix: i64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|error| anyhow!("certificate time {unix} out of range: {error}").into())
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX / 4)
}

fn ca_params(not_before: i64, not_after: i64) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.distinguished_name.push(DnType::CommonName, CA_CN);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    Ok(params)
}

/// A new CA: (certificate PEM, key PEM).
pub(crate) fn generate_ca(validity: Duration) -> Result<(String, String)> {
    let now = now_unix();
    let key = KeyPair::generate().context("generating the webhook CA key")?;
    let cert = ca_params(now - secs(SKEW), now + secs(validity))?
        .self_signed(&key)
        .context("signing the webhook CA")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names` signed by the CA key (the CA's parameters are rebuilt: its
/// name and key identify it).
pub(crate) fn issue_serving(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    names: &[String],
    validity: Duration,
) -> Result<Material> {
    let ca_key = KeyPair::from_pem(ca_key_pem).context("reading the webhook CA key")?;
    let now = now_unix();
    let issuer = Issuer::new(ca_params(now, now + 1)?, ca_key);
    let key = KeyPair::generate().context("generating the webhook serving key")?;
    let mut params = CertificateParams::new(names.to_vec()).context("serving certificate names")?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("webhook", String::as_str),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let not_after = now + secs(validity);
    params.not_before = offset(now - secs(SKEW))?;
    params.not_after = offset(not_after)?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the webhook serving certificate")?;
    Ok(Material {
        ca_pem: Some(ca_cert_pem.to_owned()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        issued_at: now,
        not_after,
    })
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
        .filter(|text| !text.trim().is_empty())
}

/// What a Secret holds: the CA (if readable) and the serving material (if complete, for the same
/// names, and not due for renewal).
struct Stored {
    ca: Option<(String, String)>,
    serving: Option<Material>,
}

fn read_secret(secret: &Secret, names: &[String], now: i64) -> Stored {
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let ca = text(data, "ca.crt")
        .zip(text(data, "ca.key"))
        .filter(|(_, key)| KeyPair::from_pem(key).is_ok());
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let number = |key: &str| annotations.get(key).and_then(|v| v.parse::<i64>().ok());
    let serving = match (
        &ca,
        text(data, "tls.crt"),
        text(data, "tls.key"),
        number(ISSUED_AT),
        number(NOT_AFTER),
    ) {
        (Some((ca_pem, _)), Some(cert_pem), Some(key_pem), Some(issued), Some(not_after))
            if annotations.get(NAMES).map(String::as_str) == Some(names.join(",").as_str()) =>
        {
            let material = Material {
                ca_pem: Some(ca_pem.clone()),
                cert_pem,
                key_pem,
                issued_at: issued,
                not_after,
            };
            (now < material.renew_at()).then_some(material)
        }
        _ => None,
    };
    Stored { ca, serving }
}

fn secret_for(
    name: &str,
    names: &[String],
    ca: &(String, String),
    serving: &Material,
    resource_version: Option<String>,
) -> Secret {
    let issued = serving.issued_at;
    let data = BTreeMap::from([
        ("ca.crt".to_owned(), ByteString(ca.0.clone().into_bytes())),
        ("ca.key".to_owned(), ByteString(ca.1.clone().into_bytes())),
        (
            "tls.crt".to_owned(),
            ByteString(serving.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".to_owned(),
            ByteString(serving.key_pem.clone().into_bytes()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            resource_version,
            annotations: Some(BTreeMap::from([
                (ISSUED_AT.to_owned(), issued.to_string()),
                (NOT_AFTER.to_owned(), serving.not_after.to_string()),
                (NAMES.to_owned(), names.join(",")),
            ])),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "kuberator".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Loads the serving material from the Secret, creating the Secret, the CA or a fresh serving
/// certificate where missing or due. Replicas racing here agree through the API server: a
/// create or replace that loses (409) reads the winner's Secret.
///
/// # Access control
/// `get`, `create`, `update` on the Secret.
pub(crate) async fn load_or_create(
    client: &Client,
    namespace: &str,
    name: &str,
    names: &[String],
    serving_validity: Duration,
    ca_validity: Duration,
) -> Result<Material> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("the webhook certificate Secret {namespace}/{name}");
    for _attempt in 0..5 {
        let existing = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading {what}"))?;
        let (ca, resource_version) = match &existing {
            Some(secret) => {
                let stored = read_secret(secret, names, now_unix());
                if let Some(serving) = stored.serving {
                    return Ok(serving);
                }
                (stored.ca, secret.metadata.resource_version.clone())
            }
            None => (None, None),
        };
        let ca = match ca {
            Some(ca) => ca,
            None => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "creating a webhook CA");
                generate_ca(ca_validity)?
            }
        };
        let serving = issue_serving(&ca.0, &ca.1, names, serving_validity)?;
        let creating = resource_version.is_none();
        let secret = secret_for(name, names, &ca, &serving, resource_version);
        let written = if creating {
            api.create(&PostParams::default(), &secret).await
        } else {
            api.replace(name, &PostParams::default(), &secret).await
        };
        match written {
            Ok(_) => {
                tracing::info!(
                    secret = %format!("{namespace}/{name}"),
                    not_after = serving.not_after,
                    "issued a webhook serving certificate"
                );
                return Ok(serving);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(%what, "another replica wrote the certificate first; reading it");
            }
            Err(error) => {
                return Err(anyhow!(error)
                    .context(format!(
                        "{} {what}",
                        if creating { "creating" } else { "updating" }
                    ))
                    .into());
            }
        }
    }
    Err(anyhow!("{what} kept changing while it was written (5 conflicts in a row)").into())
}

/// Reads certificate files (and the CA file, if any).
pub(crate) async fn read_files(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<Material> {
    let read = |path: PathBuf| async move {
        tokio::fs::read_to_string(&path)
            .await
            .with_context(|| format!("reading the webhook certificate file {}", path.display()))
    };
    let cert_pem = read(cert.to_path_buf()).await?;
    let key_pem = read(key.to_path_buf()).await?;
    let ca_pem = match ca {
        Some(path) => Some(read(path.to_path_buf()).await?),
        None => None,
    };
    Ok(Material {
        ca_pem,
        cert_pem,
        key_pem,
        issued_at: 0,
        not_after: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        tokio_rustls::rustls::crypto::ring::default_provider()
    }

    #[test]
    fn issued_certificates_are_servable_and_renewed_at_two_thirds() {
        let (ca_cert, ca_key) = generate_ca(DEFAULT_CA_VALIDITY).unwrap();
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let serving = issue_serving(&ca_cert, &ca_key, &names, Duration::from_secs(90)).unwrap();
        serving.certified_key(&provider()).unwrap();
        assert_eq!(serving.renew_at() + 30, serving.not_after);

        let secret = secret_for("tls", &names, &(ca_cert, ca_key), &serving, None);
        let now = serving.renew_at() - 1;
        assert_eq!(
            read_secret(&secret, &names, now).serving.as_ref(),
            Some(&serving)
        );
        // Due for renewal, or issued for other names: the CA is kept, the serving cert is not.
        let due = read_secret(&secret, &names, serving.renew_at());
        assert!(due.serving.is_none() && due.ca.is_some());
        let other = read_secret(&secret, &["webhook.shop.svc".to_owned()], now);
        assert!(other.serving.is_none() && other.ca.is_some());
    }

    #[test]
    fn a_certificate_is_trusted_only_under_its_own_ca_and_for_its_names() {
        let provider = Arc::new(provider());
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let (ca_cert, ca_key) = generate_ca(DEFAULT_CA_VALIDITY).unwrap();
        let (other_ca, _) = generate_ca(DEFAULT_CA_VALIDITY).unwrap();
        let mut serving =
            issue_serving(&ca_cert, &ca_key, &names, Duration::from_secs(90)).unwrap();
        serving.ca_pem = Some(ca_cert.clone());
        serving.check_trusted("127.0.0.1", &provider).unwrap();
        serving.check_trusted("localhost", &provider).unwrap();
        let error = serving
            .check_trusted("webhook.shop.svc", &provider)
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("not trusted for `webhook.shop.svc`"),
            "{error}"
        );
        // Half-replaced files: the new certificate beside the old CA (of the same name here).
        serving.ca_pem = Some(other_ca.clone());
        let error = serving.check_trusted("127.0.0.1", &provider).unwrap_err();
        assert!(error.to_string().contains("BadSignature"), "{error}");
        // Both CAs (a transition): trusted.
        serving.ca_pem = Some(format!("{other_ca}{ca_cert}"));
        serving.check_trusted("127.0.0.1", &provider).unwrap();
        // No CA file: the CA is managed elsewhere, nothing to check.
        serving.ca_pem = None;
        serving.check_trusted("127.0.0.1", &provider).unwrap();
    }

    #[test]
    fn a_garbled_secret_keeps_nothing() {
        let secret = Secret {
            data: Some(BTreeMap::from([
                ("ca.crt".to_owned(), ByteString(b"junk".to_vec())),
                ("ca.key".to_owned(), ByteString(b"junk".to_vec())),
            ])),
            ..Secret::default()
        };
        let stored = read_secret(&secret, &[], 0);
        assert!(stored.ca.is_none() && stored.serving.is_none());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (ca_cert, ca_key) = generate_ca(DEFAULT_CA_VALIDITY).unwrap();
        let names = vec!["localhost".to_owned()];
        let a = issue_serving(&ca_cert, &ca_key, &names, Duration::from_secs(60)).unwrap();
        let b = issue_serving(&ca_cert, &ca_key, &names, Duration::from_secs(60)).unwrap();
        let mixed = Material {
            key_pem: b.key_pem,
            ..a
        };
        let error = mixed.certified_key(&provider()).unwrap_err();
        assert!(error.to_string().contains("does not fit"), "{error}");
    }
}
