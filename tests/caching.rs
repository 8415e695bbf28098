//! API handle caching against a real server: each strategy's hit, miss and error.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use kuberator::{
    CachedApiProvider, CachingStrategy, ProvideApi, StaticApiProvider, testing::TestEnv,
};

async fn env_with_namespaces(names: &[&str]) -> TestEnv {
    let env = TestEnv::start().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(env.client());
    for name in names {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some((*name).to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    env
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

/// Creates a ConfigMap through the provider's handle for `namespace` and reads it back.
async fn round_trip(
    provider: &impl ProvideApi<ConfigMap>,
    namespace: &str,
) -> kuberator::Result<bool> {
    let api = provider.get(Some(namespace))?;
    let borrowed = matches!(api, Cow::Borrowed(_));
    api.create(&PostParams::default(), &config_map("probe"))
        .await
        .unwrap();
    let read = api.get("probe").await.unwrap();
    assert_eq!(read.metadata.namespace.as_deref(), Some(namespace));
    Ok(borrowed)
}

#[tokio::test]
async fn each_strategy_hits_misses_and_fails_as_documented() {
    let env = env_with_namespaces(&["shop", "blog", "misc", "more"]).await;
    let client = env.client();

    let strict =
        StaticApiProvider::<ConfigMap>::new(client.clone(), ["shop"], CachingStrategy::Strict);
    assert!(
        round_trip(&strict, "shop").await.unwrap(),
        "a strict hit is borrowed"
    );
    let error = round_trip(&strict, "blog").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "namespace `blog` is not cached (cached: shop)"
    );

    let adhoc =
        StaticApiProvider::<ConfigMap>::new(client.clone(), ["blog"], CachingStrategy::Adhoc);
    assert!(round_trip(&adhoc, "blog").await.unwrap());
    assert!(
        !round_trip(&adhoc, "misc").await.unwrap(),
        "an adhoc miss is a fresh handle"
    );

    let extendable = StaticApiProvider::<ConfigMap>::new(
        client.clone(),
        ["default"],
        CachingStrategy::Extendable,
    );
    assert!(
        round_trip(&extendable, "more").await.unwrap(),
        "an extendable miss is cached on first use and borrowed from then on"
    );
    assert!(matches!(
        extendable.get(Some("more")).unwrap(),
        Cow::Borrowed(_)
    ));

    let cached = CachedApiProvider::<ConfigMap>::new(client);
    assert!(cached.is_empty());
    let api = cached.get(Some("shop")).unwrap();
    assert_eq!(
        api.get("probe")
            .await
            .unwrap()
            .metadata
            .namespace
            .as_deref(),
        Some("shop")
    );
    assert_eq!(cached.len(), 1);
}
