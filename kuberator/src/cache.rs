//! API handle caching: one `Api<R>` per namespace, built once and looked up on every reconcile.
//!
//! | strategy | pre-cached namespaces | other namespaces | reads |
//! |---|---|---|---|
//! | [`CachingStrategy::Strict`] | yes | [`Error::NamespaceNotCached`] | lock-free |
//! | [`CachingStrategy::Adhoc`] | yes | a fresh handle each time, not cached | lock-free |
//! | [`CachingStrategy::Extendable`] | yes | built once, then cached | lock-free |
//!
//! Namespaces learned at run time (by `Extendable` and [`CachedApiProvider`]) are kept in an
//! append-only table of [`LEARNED_MAX`] slots that readers scan without a lock; past that many,
//! further namespaces get a fresh handle each time, like `Adhoc`.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::{Api, Client, Resource};

use crate::error::{Error, Result};

/// Builds `Api<R>` handles for one kind of scope; implemented for namespaced and cluster-scoped
/// resources so that providers, repositories and the controller work the same for both.
pub trait ApiScope: 'static {
    /// Whether resources of this scope live in namespaces.
    const NAMESPACED: bool;
    /// A handle for `namespace` (`None`: all namespaces, or the cluster scope).
    fn api<R: Resource<Scope = Self, DynamicType = ()>>(
        client: Client,
        namespace: Option<&str>,
    ) -> Api<R>;
}

impl ApiScope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
    fn api<R: Resource<Scope = Self, DynamicType = ()>>(
        client: Client,
        namespace: Option<&str>,
    ) -> Api<R> {
        match namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        }
    }
}

impl ApiScope for ClusterResourceScope {
    const NAMESPACED: bool = false;
    fn api<R: Resource<Scope = Self, DynamicType = ()>>(
        client: Client,
        _namespace: Option<&str>,
    ) -> Api<R> {
        Api::all(client)
    }
}

/// Hands out `Api<R>` handles by namespace.
///
/// `namespace` is the object's namespace: `None` for cluster-scoped objects (and for "all
/// namespaces" when listing).
pub trait ProvideApi<R: Resource + Clone>: Send + Sync + 'static {
    /// The handle for `namespace`, borrowed from the cache where possible.
    ///
    /// # Errors
    /// [`Error::NamespaceNotCached`] when a strict cache does not hold `namespace`.
    fn get(&self, namespace: Option<&str>) -> Result<Cow<'_, Api<R>>>;
}

/// How a [`StaticApiProvider`] treats namespaces it did not pre-cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CachingStrategy {
    /// Only pre-cached namespaces; any other is an error. Lock-free. The production choice when
    /// the namespaces are known up front.
    #[default]
    Strict,
    /// Pre-cached namespaces lock-free; others get a fresh, uncached handle each time.
    Adhoc,
    /// Pre-cached namespaces, and others cached on first use (lock-free reads).
    Extendable,
}

/// Up to this many namespaces are looked up by linear scan (faster than hashing a short key).
const LINEAR_SCAN_MAX: usize = 32;

/// An immutable namespace → handle table.
struct Table<R: Resource> {
    entries: Vec<(Box<str>, Api<R>)>,
    index: HashMap<Box<str>, usize>,
}

impl<R: Resource> Table<R> {
    fn new(entries: Vec<(Box<str>, Api<R>)>) -> Self {
        let index = if entries.len() > LINEAR_SCAN_MAX {
            entries
                .iter()
                .enumerate()
                .map(|(i, (ns, _))| (ns.clone(), i))
                .collect()
        } else {
            HashMap::new()
        };
        Self { entries, index }
    }

    #[inline]
    fn get(&self, namespace: &str) -> Option<&Api<R>> {
        if self.entries.len() <= LINEAR_SCAN_MAX {
            // Length, last and first byte rule out most candidates without a `memcmp` call.
            let wanted = namespace.as_bytes();
            self.entries
                .iter()
                .find(|(name, _)| {
                    let name = name.as_bytes();
                    name.len() == wanted.len()
                        && name.last() == wanted.last()
                        && name.first() == wanted.first()
                        && name == wanted
                })
                .map(|(_, api)| api)
        } else {
            self.index.get(namespace).map(|&i| &self.entries[i].1)
        }
    }

    fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(ns, _)| ns.to_string()).collect()
    }
}

/// How many namespaces a provider learns at run time at most.
pub const LEARNED_MAX: usize = 256;

/// Namespaces learned at run time: append-only slots, read without a lock, so a lookup can
/// borrow the handle; a mutex only orders the writers.
struct Learned<R: Resource> {
    slots: Box<[OnceLock<(Box<str>, Api<R>)>]>,
    len: AtomicUsize,
    writer: Mutex<()>,
}

impl<R: Resource> Learned<R> {
    fn new() -> Self {
        Self {
            slots: (0..LEARNED_MAX).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            writer: Mutex::new(()),
        }
    }

    #[inline]
    fn get(&self, namespace: &str) -> Option<&Api<R>> {
        let len = self.len.load(Ordering::Acquire);
        self.slots[..len]
            .iter()
            .filter_map(OnceLock::get)
            .find(|(name, _)| **name == *namespace)
            .map(|(_, api)| api)
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
}

impl<R: Resource + Clone> Learned<R> {
    /// The handle for `namespace`, built with `make` and kept if there is room.
    fn get_or_insert(&self, namespace: &str, make: impl FnOnce() -> Api<R>) -> Cow<'_, Api<R>> {
        if let Some(api) = self.get(namespace) {
            return Cow::Borrowed(api);
        }
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(api) = self.get(namespace) {
            return Cow::Borrowed(api);
        }
        let len = self.len.load(Ordering::Acquire);
        let Some(slot) = self.slots.get(len) else {
            tracing::debug!(
                namespace,
                max = LEARNED_MAX,
                "namespace cache full: uncached handle"
            );
            return Cow::Owned(make());
        };
        let (_, api) = slot.get_or_init(|| (namespace.into(), make()));
        self.len.store(len + 1, Ordering::Release);
        Cow::Borrowed(api)
    }
}

/// A provider with namespaces cached at construction (see [`CachingStrategy`]).
///
/// ```no_run
/// # use kuberator::cache::{CachingStrategy, ProvideApi, StaticApiProvider};
/// # use k8s_openapi::api::core::v1::ConfigMap;
/// # async fn doc() -> kuberator::Result<()> {
/// let client = kube::Client::try_default().await.map_err(anyhow::Error::from)?;
/// let provider =
///     StaticApiProvider::<ConfigMap>::new(client, ["default", "shop"], CachingStrategy::Strict);
/// let api = provider.get(Some("shop"))?;
/// assert!(provider.get(Some("other")).is_err());
/// # Ok(()) }
/// ```
pub struct StaticApiProvider<R: Resource> {
    client: Client,
    all: Api<R>,
    table: Table<R>,
    strategy: CachingStrategy,
    extended: Learned<R>,
    make: fn(Client, Option<&str>) -> Api<R>,
}

impl<R> StaticApiProvider<R>
where
    R: Resource<DynamicType = ()> + 'static,
    R::Scope: ApiScope,
{
    /// Pre-caches a handle for each of `namespaces` (ignored for cluster-scoped resources).
    pub fn new<I, S>(client: Client, namespaces: I, strategy: CachingStrategy) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let make: fn(Client, Option<&str>) -> Api<R> = <R::Scope as ApiScope>::api::<R>;
        let mut entries: Vec<(Box<str>, Api<R>)> = Vec::new();
        if <R::Scope as ApiScope>::NAMESPACED {
            for ns in namespaces {
                let ns: String = ns.into();
                if entries.iter().all(|(n, _)| **n != *ns) {
                    entries.push((ns.as_str().into(), make(client.clone(), Some(&ns))));
                }
            }
        }
        Self {
            all: make(client.clone(), None),
            client,
            table: Table::new(entries),
            strategy,
            extended: Learned::new(),
            make,
        }
    }

    /// A provider for a cluster-scoped resource, or for all namespaces.
    pub fn cluster(client: Client) -> Self {
        Self::new(
            client,
            std::iter::empty::<String>(),
            CachingStrategy::Strict,
        )
    }
}

impl<R: Resource> StaticApiProvider<R> {
    /// The pre-cached namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        self.table.names()
    }

    /// The caching strategy.
    pub fn strategy(&self) -> CachingStrategy {
        self.strategy
    }

    /// The client the handles were built from.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The handle over all namespaces (or the cluster scope), used for watching.
    pub fn all(&self) -> &Api<R> {
        &self.all
    }
}

impl<R: Resource + Clone + 'static> ProvideApi<R> for StaticApiProvider<R>
where
    R: Send + Sync,
{
    #[inline]
    fn get(&self, namespace: Option<&str>) -> Result<Cow<'_, Api<R>>> {
        let Some(ns) = namespace else {
            return Ok(Cow::Borrowed(&self.all));
        };
        if let Some(api) = self.table.get(ns) {
            return Ok(Cow::Borrowed(api));
        }
        match self.strategy {
            CachingStrategy::Strict => {
                if self.table.entries.is_empty() {
                    // Nothing pre-cached: the provider serves all namespaces.
                    Ok(Cow::Owned((self.make)(self.client.clone(), Some(ns))))
                } else {
                    Err(Error::NamespaceNotCached {
                        namespace: ns.to_owned(),
                        cached: self.table.names(),
                    })
                }
            }
            CachingStrategy::Adhoc => Ok(Cow::Owned((self.make)(self.client.clone(), Some(ns)))),
            CachingStrategy::Extendable => Ok(self
                .extended
                .get_or_insert(ns, || (self.make)(self.client.clone(), Some(ns)))),
        }
    }
}

/// A provider that discovers namespaces at run time and caches each on first use.
pub struct CachedApiProvider<R: Resource> {
    client: Client,
    all: Api<R>,
    cache: Learned<R>,
    make: fn(Client, Option<&str>) -> Api<R>,
}

impl<R> CachedApiProvider<R>
where
    R: Resource<DynamicType = ()> + 'static,
    R::Scope: ApiScope,
{
    /// An empty cache.
    pub fn new(client: Client) -> Self {
        let make: fn(Client, Option<&str>) -> Api<R> = <R::Scope as ApiScope>::api::<R>;
        Self {
            all: make(client.clone(), None),
            client,
            cache: Learned::new(),
            make,
        }
    }

    /// How many namespaces are cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether no namespace is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<R: Resource + Clone + Send + Sync + 'static> ProvideApi<R> for CachedApiProvider<R> {
    fn get(&self, namespace: Option<&str>) -> Result<Cow<'_, Api<R>>> {
        let Some(ns) = namespace else {
            return Ok(Cow::Borrowed(&self.all));
        };
        Ok(self
            .cache
            .get_or_insert(ns, || (self.make)(self.client.clone(), Some(ns))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::{core::v1::ConfigMap, rbac::v1::ClusterRole};

    fn client() -> Client {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        Client::new(service, "default")
    }

    fn path<R: Resource>(api: &Api<R>) -> String {
        api.resource_url().to_owned()
    }

    #[tokio::test]
    async fn strict_hits_pre_cached_and_names_them_on_a_miss() {
        let p = StaticApiProvider::<ConfigMap>::new(client(), ["a", "b"], CachingStrategy::Strict);
        let hit = p.get(Some("b")).unwrap();
        assert!(matches!(hit, Cow::Borrowed(_)));
        assert_eq!(path(&hit), "/api/v1/namespaces/b/configmaps");
        let err = p.get(Some("c")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "namespace `c` is not cached (cached: a, b)"
        );
    }

    #[tokio::test]
    async fn adhoc_builds_uncached_handles_on_a_miss() {
        let p = StaticApiProvider::<ConfigMap>::new(client(), ["a"], CachingStrategy::Adhoc);
        assert!(matches!(p.get(Some("a")).unwrap(), Cow::Borrowed(_)));
        let miss = p.get(Some("z")).unwrap();
        assert!(matches!(miss, Cow::Owned(_)));
        assert_eq!(path(&miss), "/api/v1/namespaces/z/configmaps");
        assert_eq!(p.namespaces(), vec!["a".to_string()]);
    }

    #[tokio::test]
    async fn extendable_caches_misses() {
        let p = StaticApiProvider::<ConfigMap>::new(client(), ["a"], CachingStrategy::Extendable);
        assert_eq!(
            path(&p.get(Some("z")).unwrap()),
            "/api/v1/namespaces/z/configmaps"
        );
        assert_eq!(p.extended.len(), 1);
        assert!(matches!(p.get(Some("z")).unwrap(), Cow::Borrowed(_)));
        assert_eq!(p.extended.len(), 1);
    }

    #[tokio::test]
    async fn long_names_sharing_a_prefix_are_told_apart() {
        let p = StaticApiProvider::<ConfigMap>::new(
            client(),
            ["production-eu", "production-us", "prod", "prod\0"],
            CachingStrategy::Strict,
        );
        assert_eq!(
            path(&p.get(Some("production-us")).unwrap()),
            "/api/v1/namespaces/production-us/configmaps"
        );
        assert_eq!(
            path(&p.get(Some("prod")).unwrap()),
            "/api/v1/namespaces/prod/configmaps"
        );
        assert!(p.get(Some("production-xx")).is_err());
        assert!(p.get(Some("productio")).is_err());
    }

    #[tokio::test]
    async fn many_namespaces_use_the_index() {
        let names: Vec<String> = (0..20).map(|i| format!("ns{i}")).collect();
        let p = StaticApiProvider::<ConfigMap>::new(client(), names, CachingStrategy::Strict);
        assert_eq!(
            path(&p.get(Some("ns17")).unwrap()),
            "/api/v1/namespaces/ns17/configmaps"
        );
        assert!(p.get(Some("ns20")).is_err());
    }

    #[tokio::test]
    async fn cluster_scoped_resources_ignore_namespaces() {
        let p = StaticApiProvider::<ClusterRole>::new(client(), ["a"], CachingStrategy::Strict);
        assert!(p.namespaces().is_empty());
        assert_eq!(
            path(&p.get(None).unwrap()),
            "/apis/rbac.authorization.k8s.io/v1/clusterroles"
        );
    }

    #[tokio::test]
    async fn past_the_learned_maximum_handles_are_fresh() {
        let p = CachedApiProvider::<ConfigMap>::new(client());
        for i in 0..LEARNED_MAX {
            assert!(matches!(
                p.get(Some(&format!("n{i}"))).unwrap(),
                Cow::Borrowed(_)
            ));
        }
        let extra = p.get(Some("one-more")).unwrap();
        assert!(matches!(extra, Cow::Owned(_)));
        assert_eq!(path(&extra), "/api/v1/namespaces/one-more/configmaps");
        assert_eq!(p.len(), LEARNED_MAX);
        assert_eq!(
            path(&p.get(Some("n17")).unwrap()),
            "/api/v1/namespaces/n17/configmaps"
        );
    }

    #[tokio::test]
    async fn cached_provider_discovers_namespaces() {
        let p = CachedApiProvider::<ConfigMap>::new(client());
        assert!(p.is_empty());
        assert_eq!(
            path(&p.get(Some("x")).unwrap()),
            "/api/v1/namespaces/x/configmaps"
        );
        p.get(Some("x")).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(path(&p.get(None).unwrap()), "/api/v1/configmaps");
    }
}
