//! Admission and conversion webhooks: a `Bucket` operator whose `validate` and `default`
//! methods run inside the API server's write path, and whose CRD serves an old version
//! (`v1alpha1`) converted to the stored one (`v1`) by the operator.
//!
//! - `validate` refuses a region the operator does not know, a retention over ten years, and a
//!   change of region (immutable): `kubectl apply` prints the operator's own message.
//! - `default` fills `storageClass` when it is missing: `kubectl get -o yaml` shows it.
//! - `v1alpha1` said `retention: "30d"`; `v1` says `retentionDays: 30`. A `TryFrom` and a `From`
//!   between the two specs are all the conversion takes ([`conversion`]); a `v1alpha1` object
//!   whose retention cannot be read is refused with its name.
//!
//! The server, its certificate (created in a Secret), the `caBundle` of the webhook
//! configurations and of the CRD's conversion stanza: all done by kuberator at start-up
//! ([`operator()`]). Against the local control plane (a fresh etcd + kube-apiserver, gone at
//! exit):
//!
//! ```text
//! cargo run -p kuberator-examples --bin webhooks
//! ```

use kuberator::{
    prelude::*,
    testing::TestEnv,
    webhook::{Conversion, WebhookServer},
};

use crate::story::{self, kubectl, poll};

/// The API group of `Bucket`.
pub const GROUP: &str = "webhooks.kuberator.dev";
/// The regions `validate` accepts.
pub const REGIONS: [&str; 2] = ["eu-west", "us-east"];
/// What `default` sets a missing `storageClass` to.
pub const DEFAULT_STORAGE_CLASS: &str = "standard";

/// The stored version.
pub mod v1 {
    use kuberator::prelude::*;

    /// A storage bucket.
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
    #[kube(
        group = "webhooks.kuberator.dev",
        version = "v1",
        kind = "Bucket",
        namespaced,
        printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.region"}"#,
        printcolumn = r#"{"name":"Class","type":"string","jsonPath":".spec.storageClass"}"#,
        printcolumn = r#"{"name":"Retention","type":"integer","jsonPath":".spec.retentionDays"}"#
    )]
    #[serde(rename_all = "camelCase")]
    pub struct BucketSpec {
        /// Where the bucket lives (immutable).
        pub region: String,
        /// How long objects are kept, in days.
        pub retention_days: u32,
        /// The storage class; set by the operator when missing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub storage_class: Option<String>,
    }
}

/// The old version, still served: the retention as text such as `30d`.
pub mod v1alpha1 {
    use kuberator::prelude::*;

    /// A storage bucket, as it was first defined.
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
    #[kube(
        group = "webhooks.kuberator.dev",
        version = "v1alpha1",
        kind = "Bucket",
        namespaced
    )]
    #[serde(rename_all = "camelCase")]
    pub struct BucketSpec {
        /// Where the bucket lives.
        pub region: String,
        /// How long objects are kept: a number of days and `d`, e.g. `30d`.
        pub retention: String,
        /// The storage class.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub storage_class: Option<String>,
    }
}

impl TryFrom<v1alpha1::BucketSpec> for v1::BucketSpec {
    type Error = String;

    fn try_from(old: v1alpha1::BucketSpec) -> Result<Self, String> {
        let retention_days = old
            .retention
            .strip_suffix('d')
            .and_then(|days| days.parse().ok())
            .ok_or_else(|| {
                format!(
                    "retention `{}` is not a number of days such as `30d`",
                    old.retention
                )
            })?;
        Ok(v1::BucketSpec {
            region: old.region,
            retention_days,
            storage_class: old.storage_class,
        })
    }
}

impl From<v1::BucketSpec> for v1alpha1::BucketSpec {
    fn from(new: v1::BucketSpec) -> Self {
        v1alpha1::BucketSpec {
            region: new.region,
            retention: format!("{}d", new.retention_days),
            storage_class: new.storage_class,
        }
    }
}

/// The versions of `Bucket`: `v1` stored, `v1alpha1` converted through it.
pub fn conversion() -> Conversion<v1::Bucket> {
    Conversion::<v1::Bucket>::new().version::<v1alpha1::Bucket>()
}

/// The operator: nothing to reconcile in this story, everything happens in its webhooks.
pub struct Buckets;

#[kuberator::operator(resource = v1::Bucket, webhooks = "bucket-webhooks")]
impl Buckets {
    async fn apply(&self, _bucket: Arc<v1::Bucket>) -> Result<Action> {
        Ok(Action::await_change())
    }

    /// Creates and updates, before they are stored (`old` is `None` on create).
    async fn validate(&self, new: &v1::Bucket, old: Option<&v1::Bucket>) -> Result<(), Denied> {
        if !REGIONS.contains(&new.spec.region.as_str()) {
            return Err(Denied::new(format!(
                "unknown region `{}`: buckets live in {}",
                new.spec.region,
                REGIONS.join(" or ")
            ))
            .field("spec.region"));
        }
        if new.spec.retention_days > 3650 {
            return Err(Denied::new("at most 3650 days (ten years)").field("spec.retentionDays"));
        }
        match old {
            Some(old) if old.spec.region != new.spec.region => Err(Denied::immutable(
                "spec.region",
                &old.spec.region,
                &new.spec.region,
            )),
            _ => Ok(()),
        }
    }

    /// Fills what the user left out; the API server stores the patch kuberator computes.
    async fn default(&self, bucket: &mut v1::Bucket) {
        bucket
            .spec
            .storage_class
            .get_or_insert_with(|| DEFAULT_STORAGE_CLASS.to_owned());
    }
}

/// The operator with its webhooks served on 127.0.0.1 (next to a local API server such as
/// [`TestEnv`]; in a cluster the macro's `webhooks = "bucket-webhooks"` Service is used as
/// it is) and the conversion of `Bucket`'s versions.
///
/// # Errors
/// As [`IntoOperator::operator`].
pub fn operator(client: Client) -> Result<Operator<v1::Bucket>> {
    Ok(Buckets
        .operator(client)?
        .conversion(conversion())
        .webhook_server(WebhookServer::local().configuration_name("bucket-webhooks")))
}

/// A bucket in `region` without a storage class (the default fills it).
pub const VALID: &str = "apiVersion: webhooks.kuberator.dev/v1
kind: Bucket
metadata:
  name: logs
spec:
  region: eu-west
  retentionDays: 30
";

/// A bucket in a region the operator does not know.
pub const INVALID: &str = "apiVersion: webhooks.kuberator.dev/v1
kind: Bucket
metadata:
  name: logs
spec:
  region: mars-north
  retentionDays: 30
";

/// [`VALID`] moved to another region: refused, the region is immutable.
pub const MOVED: &str = "apiVersion: webhooks.kuberator.dev/v1
kind: Bucket
metadata:
  name: logs
spec:
  region: us-east
  retentionDays: 30
";

/// A bucket written as the old version.
pub const OLD_VERSION: &str = "apiVersion: webhooks.kuberator.dev/v1alpha1
kind: Bucket
metadata:
  name: archive
spec:
  region: us-east
  retention: 365d
  storageClass: cold
";

/// An old-version bucket whose retention cannot be converted.
pub const UNCONVERTIBLE: &str = "apiVersion: webhooks.kuberator.dev/v1alpha1
kind: Bucket
metadata:
  name: forever
spec:
  region: us-east
  retention: forever
";

/// `kubectl apply -f -` of `yaml`: `Ok(stdout)` or `Err(stderr)` (a refusal is the point of
/// some steps).
///
/// # Errors
/// `Err(stderr)` when kubectl fails; an I/O error starting it is returned as text too.
pub async fn apply(env: &TestEnv, yaml: &str) -> std::result::Result<String, String> {
    use tokio::io::AsyncWriteExt as _;
    let spawned = env
        .kubectl()
        .args(["apply", "-n", "default", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = spawned.map_err(|error| format!("starting kubectl: {error}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(yaml.as_bytes())
            .await
            .map_err(|error| format!("writing to kubectl: {error}"))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|error| format!("waiting for kubectl: {error}"))?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    match output.status.success() {
        true => Ok(text(&output.stdout)),
        false => Err(text(&output.stderr)),
    }
}

/// Installs the two-version CRD (conversion `None` until the operator points it at itself)
/// and waits until the API server serves both versions.
///
/// # Errors
/// The CRD cannot be built or installed.
pub async fn install_crd(env: &TestEnv) -> anyhow::Result<()> {
    env.install_crd_value(conversion().crd()?).await?;
    Ok(())
}

/// Waits until the API server calls the operator's webhooks: the validator refuses [`INVALID`]
/// (a server-side dry run) and the CRD converts (a dry run of [`OLD_VERSION`] is accepted).
///
/// # Errors
/// A timeout.
pub async fn until_served(env: &TestEnv) -> anyhow::Result<()> {
    poll("the operator's webhooks to be called", || async {
        let dry = |yaml: &'static str| async move {
            let mut command = env.kubectl();
            command.args(["apply", "--dry-run=server", "-n", "default", "-f", "-"]);
            command.stdin(std::process::Stdio::piped());
            command.stdout(std::process::Stdio::null());
            command.stderr(std::process::Stdio::piped());
            let mut child = command.spawn().ok()?;
            let mut stdin = child.stdin.take()?;
            tokio::io::AsyncWriteExt::write_all(&mut stdin, yaml.as_bytes())
                .await
                .ok()?;
            drop(stdin);
            let output = child.wait_with_output().await.ok()?;
            Some((
                output.status.success(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ))
        };
        let (ok, stderr) = dry(INVALID).await?;
        let validated = !ok && stderr.contains("unknown region");
        let (converted, _) = dry(OLD_VERSION).await?;
        (validated && converted).then_some(())
    })
    .await
}

/// What the story saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// kubectl's error for [`INVALID`].
    pub refused: String,
    /// `spec.storageClass` of the stored [`VALID`] (set by `default`).
    pub defaulted_storage_class: String,
    /// kubectl's error for [`MOVED`].
    pub immutable: String,
    /// `spec` of [`OLD_VERSION`] read as `v1`.
    pub as_v1: serde_json::Value,
    /// `spec` of [`OLD_VERSION`] read as `v1alpha1` again.
    pub as_v1alpha1: serde_json::Value,
    /// kubectl's error for [`UNCONVERTIBLE`].
    pub unconvertible: String,
}

/// The story: start the operator, then refuse, default and convert with kubectl.
///
/// # Errors
/// A step whose result is not what the story says.
pub async fn run(env: &TestEnv) -> anyhow::Result<Outcome> {
    install_crd(env).await?;
    let operator = operator(env.client())?;
    let running = story::background(|stop| operator.shutdown_on(stop).run());
    until_served(env).await?;
    println!(
        "The operator serves its webhooks on 127.0.0.1 with a certificate it created; the caBundle \
         of its webhook configurations and of the CRD's conversion is in place."
    );

    let refused = apply(env, INVALID)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a bucket in `mars-north` was accepted"))?;
    println!("$ kubectl apply -f invalid.yaml\n{refused}");

    let created = apply(env, VALID).await.map_err(anyhow::Error::msg)?;
    println!("$ kubectl apply -f bucket.yaml\n{created}");
    let stored = env
        .kubectl_json(["get", "bucket", "logs", "-n", "default"])
        .await?;
    let defaulted_storage_class = stored["spec"]["storageClass"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!("$ kubectl get bucket logs -o yaml   # spec.storageClass set by `default`");
    println!("{}", serde_json::to_string_pretty(&stored["spec"])?);

    let immutable = apply(env, MOVED)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("the region of `logs` changed"))?;
    println!("$ kubectl apply -f moved.yaml\n{immutable}");

    let created = apply(env, OLD_VERSION).await.map_err(anyhow::Error::msg)?;
    println!("$ kubectl apply -f v1alpha1.yaml\n{created}");
    let read = |version: &'static str| async move {
        let resource = format!("buckets.{version}.{GROUP}");
        env.kubectl_json(["get", &resource, "archive", "-n", "default"])
            .await
            .map(|object| object["spec"].clone())
    };
    let as_v1 = read("v1").await?;
    println!(
        "$ kubectl get buckets.v1.{GROUP} archive   # stored as v1\n{}",
        serde_json::to_string_pretty(&as_v1)?
    );
    let as_v1alpha1 = read("v1alpha1").await?;
    let unconvertible = apply(env, UNCONVERTIBLE)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a retention of `forever` was converted"))?;
    println!("$ kubectl apply -f forever.yaml\n{unconvertible}");
    println!(
        "{}",
        kubectl(env, &["get", "buckets", "-n", "default"]).await?
    );
    running.stop().await??;
    Ok(Outcome {
        refused,
        defaulted_storage_class,
        immutable,
        as_v1,
        as_v1alpha1,
        unconvertible,
    })
}
