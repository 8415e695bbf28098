//! Two CRDs, one process: the demo's [`StaticSite`] operator and a `SiteBackup` operator run by
//! one [`Manager`]. A `SiteBackup` names a site; its controller copies the site's page into a
//! ConfigMap `<backup>-backup` (owned by the backup) and says in status which generation of the
//! site it holds. It reads the site from the manager's shared cache (no GET), and every change
//! of a site re-triggers the backups that name it.
//!
//! The manager holds one watch per kind: `StaticSite` (primary of one controller, related kind
//! of the other), `SiteBackup`, and metadata-only `ConfigMap` (owned by both) and `Service`.
//! One Lease, one `/metrics` and `/readyz`, one permission check (the union of both
//! controllers' rules, [`rbac`]), one shutdown.
//!
//! ```text
//! cargo run -p kuberator-examples --bin site_backup
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{api::PostParams, runtime::reflector::ObjectRef};
use kuberator::{
    manifests::{Rbac, rbac_rules_for},
    prelude::*,
    runtime::{Caches, Manager},
    testing::TestEnv,
};

use crate::{
    static_site::{StaticSite, StaticSiteSpec, StaticSites},
    story::{self, kubectl},
};

/// A backup of one [`StaticSite`] in the same namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "demo.kuberator.dev",
    version = "v1",
    kind = "SiteBackup",
    namespaced,
    status = "SiteBackupStatus",
    printcolumn = r#"{"name":"Site","type":"string","jsonPath":".spec.site"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"SiteGen","type":"integer","jsonPath":".status.siteGeneration"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SiteBackupSpec {
    /// The name of the `StaticSite` to back up.
    pub site: String,
}

/// What the backup controller reports.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema, ObserveGeneration,
)]
#[serde(rename_all = "camelCase")]
pub struct SiteBackupStatus {
    /// The generation of the backup this status describes.
    pub observed_generation: Option<i64>,
    /// `BackedUp`, or `WaitingForSite` while the site does not exist.
    pub phase: Option<String>,
    /// The site generation the backup holds.
    pub site_generation: Option<i64>,
}

/// The backup controller (no state of its own).
#[derive(Default)]
pub struct SiteBackups;

#[kuberator::operator(
    resource = SiteBackup,
    events = "sitebackups.demo.kuberator.dev/operator",
    owns(ConfigMap)
)]
impl SiteBackups {
    async fn apply(&self, backup: Arc<SiteBackup>, ctx: &Ctx<SiteBackup>) -> Result<Action> {
        let namespace = backup.namespace();
        // From the manager's cache of StaticSites, which the site controller watches anyway.
        let site = ctx
            .cache::<StaticSite>()?
            .get(&backup.spec.site, namespace.as_deref());
        let mut status = backup.status.clone().unwrap_or_default();
        let Some(site) = site else {
            // The site's creation re-triggers this backup (`watches::<StaticSite>` below).
            status.phase = Some("WaitingForSite".into());
            ctx.update_status(&backup, status).await?;
            return Ok(Action::await_change());
        };
        ctx.apply_child(&backup, copy(&backup.name_any(), &site))
            .await?;
        status.phase = Some("BackedUp".into());
        status.site_generation = site.metadata.generation;
        ctx.update_status(&backup, status).await?;
        Ok(Action::await_change())
    }
}

fn copy(backup: &str, site: &StaticSite) -> ConfigMap {
    let StaticSiteSpec {
        title,
        content,
        port,
    } = &site.spec;
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("{backup}-backup")),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            ("title".to_owned(), title.clone()),
            ("content".to_owned(), content.clone()),
            ("port".to_owned(), port.to_string()),
            (
                "generation".to_owned(),
                site.metadata.generation.unwrap_or_default().to_string(),
            ),
        ])),
        ..ConfigMap::default()
    }
}

/// The backups that name `site`, from the cache of backups.
pub fn backups_of(caches: &Caches, site: &StaticSite) -> Vec<ObjectRef<SiteBackup>> {
    let Ok(backups) = caches.get::<SiteBackup>() else {
        return Vec::new();
    };
    let name = site.name_any();
    backups
        .list(site.namespace().as_deref())
        .iter()
        .filter(|backup| backup.spec.site == name)
        .map(|backup| ObjectRef::from_obj(backup.as_ref()))
        .collect()
}

/// The manager of both controllers: sites and their backups.
///
/// # Errors
/// When an operator cannot be built.
pub fn manager(client: Client) -> Result<Manager> {
    let caches = Caches::new();
    let lookup = caches.clone();
    let backups = SiteBackups
        .operator(client.clone())?
        .reads::<StaticSite>()
        .share_caches(caches)
        .watches::<StaticSite, _, _>(move |site| backups_of(&lookup, &site));
    Ok(Manager::new(client.clone())
        .add(StaticSites.operator(client)?)
        .add(backups))
}

/// The RBAC of the manager: the union of both controllers' least-privilege rules, for a
/// ServiceAccount `site-operator` in `namespace`.
pub fn rbac(namespace: &str) -> Rbac {
    let sites = rbac_rules_for::<StaticSite>(&StaticSites::rbac_options());
    let backups = rbac_rules_for::<SiteBackup>(&SiteBackups::rbac_options());
    let mut union = Rbac::union("site-operator", [sites, backups]);
    union.service_account = Some(kuberator::manifests::ServiceAccountRef {
        namespace: namespace.to_owned(),
        name: "site-operator".to_owned(),
    });
    union
}

/// Everything to install, as one YAML stream: both CRDs, the ServiceAccount and the union RBAC.
///
/// # Errors
/// When an object cannot be serialized (it always can).
pub fn manifests(namespace: &str) -> Result<String> {
    kuberator::manifests::bundle_yaml([StaticSite::crd(), SiteBackup::crd()], &rbac(namespace))
}

fn backup_status(backup: Option<&SiteBackup>) -> Option<&SiteBackupStatus> {
    backup?.status.as_ref()
}

/// What the story saw.
#[derive(Debug)]
pub struct Report {
    /// The backup's ConfigMap data after the site was published.
    pub first: BTreeMap<String, String>,
    /// The backup's ConfigMap data after the site's title changed.
    pub second: BTreeMap<String, String>,
    /// `kubectl get sitebackups` at the end.
    pub table: String,
}

/// The story: a backup waiting for its site, the site created (both controllers act), the site
/// changed (the backup follows).
///
/// # Errors
/// When a step does not happen within [`story::TIMEOUT`].
pub async fn run(env: &TestEnv) -> anyhow::Result<Report> {
    env.install_crd::<StaticSite>().await?;
    env.install_crd::<SiteBackup>().await?;
    let client = env.client();
    let manager = manager(client.clone())?;
    let running = story::background(|stop| manager.shutdown_on(stop).run());
    let backups: Api<SiteBackup> = Api::namespaced(client.clone(), "default");
    let sites: Api<StaticSite> = Api::namespaced(client.clone(), "default");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let post = PostParams::default();

    println!("kubectl apply: a SiteBackup `nightly` of site `home`, which does not exist yet");
    backups
        .create(
            &post,
            &SiteBackup::new(
                "nightly",
                SiteBackupSpec {
                    site: "home".into(),
                },
            ),
        )
        .await?;
    story::until(
        &backups,
        "nightly",
        "the backup waiting for its site",
        |b: Option<&SiteBackup>| {
            backup_status(b).and_then(|s| s.phase.as_deref()) == Some("WaitingForSite")
        },
    )
    .await?;

    println!("kubectl apply: the StaticSite `home`: one controller publishes, the other backs up");
    let spec = |title: &str| StaticSiteSpec {
        title: title.into(),
        content: "<p>hello</p>".into(),
        port: 8080,
    };
    sites
        .create(&post, &StaticSite::new("home", spec("Home")))
        .await?;
    story::until(
        &sites,
        "home",
        "the site published",
        |s: Option<&StaticSite>| {
            s.and_then(|s| s.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                == Some("Published")
        },
    )
    .await?;
    story::until(
        &backups,
        "nightly",
        "the backup of generation 1",
        |b: Option<&SiteBackup>| backup_status(b).and_then(|s| s.site_generation) == Some(1),
    )
    .await?;
    let first = maps.get("nightly-backup").await?.data.unwrap_or_default();

    println!("kubectl edit: the site's title changes; the backup follows");
    let mut site = sites.get("home").await?;
    site.spec = spec("Home, renamed");
    sites.replace("home", &post, &site).await?;
    story::until(
        &backups,
        "nightly",
        "the backup of generation 2",
        |b: Option<&SiteBackup>| backup_status(b).and_then(|s| s.site_generation) == Some(2),
    )
    .await?;
    let second = maps.get("nightly-backup").await?.data.unwrap_or_default();
    let table = kubectl(env, &["get", "sitebackups", "-n", "default"]).await?;
    println!("{table}");
    running.stop().await??;
    Ok(Report {
        first,
        second,
        table,
    })
}
