//! API handle caching: how a provider hands out an `Api<R>` per namespace, and what each
//! [`CachingStrategy`] does with a namespace that was not pre-cached.
//!
//! The same lookups (`shop`, pre-cached; then `misc`, twice) through a [`StaticApiProvider`]
//! with each strategy, and through a [`CachedApiProvider`], which pre-caches nothing and learns
//! namespaces as they come. Each handle it hands out writes a ConfigMap, so the result is
//! visible on the server:
//!
//! | provider | `shop` (pre-cached) | `misc` (not pre-cached) |
//! |---|---|---|
//! | `Strict` | hit, borrowed, lock-free | error: `namespace `misc` is not cached` |
//! | `Adhoc` | hit | a fresh handle on every lookup, never cached |
//! | `Extendable` | hit | built on the first lookup, then borrowed from the cache (lock-free) |
//! | `CachedApiProvider` | learned on first use, then borrowed | learned on first use, then borrowed |
//!
//! In an operator, `#[kuberator::operator(namespaces("shop", "blog"), caching = Adhoc)]` picks
//! the strategy of its repository (default: `Strict` with `namespaces`, else `Extendable`).
//!
//! Against the local control plane (a fresh etcd + kube-apiserver, gone at exit):
//!
//! ```text
//! cargo run -p kuberator-examples --bin caching
//! ```

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use kuberator::{
    CachedApiProvider, CachingStrategy, ProvideApi, StaticApiProvider, testing::TestEnv,
};

/// The namespaces the static providers pre-cache.
pub const PRE_CACHED: [&str; 2] = ["shop", "blog"];

/// What one lookup gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// A handle borrowed from the provider's cache (no allocation, no lock).
    Borrowed,
    /// A handle built or cloned for this lookup.
    Owned,
    /// No handle: the error's message.
    Refused(String),
}

/// One lookup: which provider, which namespace, what it gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// `Strict`, `Adhoc`, `Extendable` or `CachedApiProvider`.
    pub provider: String,
    /// The namespace asked for.
    pub namespace: String,
    /// The result.
    pub found: Found,
}

/// What the story observed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Every lookup, in order.
    pub lookups: Vec<Lookup>,
    /// How many namespaces the `CachedApiProvider` held before and after.
    pub learned: (usize, usize),
}

/// Creates the namespaces, makes the lookups, writes a ConfigMap with each handle.
///
/// # Errors
/// An API error (a refused lookup is not an error: it is part of the story).
pub async fn run(env: &TestEnv) -> anyhow::Result<Outcome> {
    let client = env.client();
    for name in ["shop", "blog", "misc"] {
        let namespace = Namespace {
            metadata: named(name),
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
    }
    let mut lookups = Vec::new();

    for strategy in [
        CachingStrategy::Strict,
        CachingStrategy::Adhoc,
        CachingStrategy::Extendable,
    ] {
        let rule = match strategy {
            CachingStrategy::Strict => "other namespaces are an error",
            CachingStrategy::Adhoc => "other namespaces get a fresh handle each time, never cached",
            CachingStrategy::Extendable => "other namespaces are built once, then cached",
        };
        println!("StaticApiProvider, {strategy:?}, pre-cached {PRE_CACHED:?}: {rule}");
        let provider = StaticApiProvider::<ConfigMap>::new(client.clone(), PRE_CACHED, strategy);
        let name = format!("{strategy:?}").to_lowercase();
        for namespace in ["shop", "misc", "misc"] {
            lookups.push(lookup(&provider, &format!("{strategy:?}"), namespace, &name).await?);
        }
    }

    println!("CachedApiProvider: nothing pre-cached, every namespace cached on first use");
    let provider = CachedApiProvider::<ConfigMap>::new(client.clone());
    let before = provider.len();
    for namespace in ["shop", "misc", "misc"] {
        lookups.push(lookup(&provider, "CachedApiProvider", namespace, "cached").await?);
    }
    let learned = (before, provider.len());
    println!(
        "  namespaces cached: {} before, {} after",
        learned.0, learned.1
    );
    Ok(Outcome { lookups, learned })
}

/// Looks up `namespace` in `provider` and, with a handle, writes ConfigMap `probe` there
/// (created once per provider: a second write to the same namespace replaces it).
async fn lookup(
    provider: &impl ProvideApi<ConfigMap>,
    label: &str,
    namespace: &str,
    probe: &str,
) -> anyhow::Result<Lookup> {
    let found = match provider.get(Some(namespace)) {
        Ok(api) => {
            let found = match api {
                Cow::Borrowed(_) => Found::Borrowed,
                Cow::Owned(_) => Found::Owned,
            };
            write_probe(&api, probe).await?;
            found
        }
        Err(error) => Found::Refused(error.to_string()),
    };
    let shown = match &found {
        Found::Borrowed => {
            "a handle borrowed from the provider's cache; ConfigMap written".to_owned()
        }
        Found::Owned => "an owned handle; ConfigMap written".to_owned(),
        Found::Refused(error) => format!("error: {error}"),
    };
    println!("  get({namespace:?}) → {shown}");
    Ok(Lookup {
        provider: label.to_owned(),
        namespace: namespace.to_owned(),
        found,
    })
}

async fn write_probe(api: &Api<ConfigMap>, name: &str) -> anyhow::Result<()> {
    let probe = ConfigMap {
        metadata: named(name),
        ..ConfigMap::default()
    };
    if api.get_opt(name).await?.is_none() {
        api.create(&PostParams::default(), &probe).await?;
    }
    Ok(())
}

fn named(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

/// The probe ConfigMaps in `namespace`, as the server lists them (for checking the story).
///
/// # Errors
/// An API error.
pub async fn probes(client: Client, namespace: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let mut names: Vec<String> = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|cm| cm.metadata.name)
        .filter(|name| name != "kube-root-ca.crt")
        .collect();
    names.sort();
    Ok(names)
}
