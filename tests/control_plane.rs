//! `kuberator::testing::TestEnv` itself: CRDs, CRUD and watches through kube, kubectl, teardown,
//! isolation of parallel environments, and garbage collection by the controller-manager.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    Api, CustomResource, CustomResourceExt, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use kuberator::testing::TestEnv;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A namespaced custom resource with a status subresource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "testenv.kuberator.dev",
    version = "v1",
    kind = "Gadget",
    namespaced,
    status = "GadgetStatus",
    shortname = "gd"
)]
pub(crate) struct GadgetSpec {
    size: i32,
}

/// Status of a [`Gadget`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub(crate) struct GadgetStatus {
    phase: String,
}

const WAIT: Duration = Duration::from_secs(60);

fn gadget(name: &str, size: i32) -> Gadget {
    Gadget::new(name, GadgetSpec { size })
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some([("key".to_owned(), "value".to_owned())].into()),
        ..ConfigMap::default()
    }
}

/// Whether a process is gone: no `/proc/<pid>`, or only a zombie left for init to reap.
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn crd_crud_status_and_watch_through_kube() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let crd = env.install_crd::<Gadget>().await?;
    assert_eq!(crd.name_any(), Gadget::crd_name());
    let established = crd
        .status
        .and_then(|status| status.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established, "install_crd returned before Established");

    let gadgets: Api<Gadget> = Api::namespaced(env.client(), "default");
    // Watch from before the first create: the watcher runs in its own task, and the test goes on
    // once its initial (empty) list is done.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = watcher(gadgets.clone(), watcher::Config::default()).boxed();
    let watching = tokio::spawn(async move {
        while let Some(event) = stream.try_next().await? {
            if events_tx.send(event).is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });
    tokio::time::timeout(WAIT, async {
        while let Some(event) = events.recv().await {
            if matches!(event, watcher::Event::InitDone) {
                break;
            }
        }
    })
    .await?;

    let created = gadgets
        .create(&PostParams::default(), &gadget("first", 1))
        .await?;
    assert!(created.uid().is_some());
    assert_eq!(gadgets.get("first").await?.spec.size, 1);

    gadgets
        .patch(
            "first",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await?;
    let patched = gadgets
        .patch_status(
            "first",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}})),
        )
        .await?;
    assert_eq!(patched.spec.size, 2);
    assert_eq!(
        patched.status.as_ref().map(|s| s.phase.as_str()),
        Some("Ready")
    );
    // The status subresource ignores spec changes and the main resource ignores status.
    gadgets
        .patch(
            "first",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ignored"}})),
        )
        .await?;
    let current = gadgets.get("first").await?;
    assert_eq!(current.status.map(|s| s.phase), Some("Ready".to_owned()));

    gadgets.delete("first", &DeleteParams::default()).await?;
    assert!(gadgets.get_opt("first").await?.is_none());

    // The watch sees the status change and then the deletion.
    let mut saw_ready = false;
    let mut saw_delete = false;
    tokio::time::timeout(WAIT, async {
        while let Some(event) = events.recv().await {
            match event {
                watcher::Event::Apply(g) | watcher::Event::InitApply(g)
                    if g.status.as_ref().is_some_and(|s| s.phase == "Ready") =>
                {
                    saw_ready = true;
                }
                watcher::Event::Delete(g) if g.name_any() == "first" => {
                    saw_delete = true;
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no Delete event within {WAIT:?}"))?;
    assert!(saw_ready, "the watch never showed status.phase = Ready");
    assert!(saw_delete, "the watch ended: {:?}", watching.await);
    watching.abort();
    Ok(())
}

#[tokio::test]
async fn kubectl_and_kubeconfig_reach_the_server() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    println!(
        "TestEnv started in {:?}; kube-apiserver RSS {} KiB, etcd RSS {} KiB",
        env.started_in(),
        rss_kib(env.apiserver_pid()).unwrap_or(0),
        rss_kib(env.etcd_pid()).unwrap_or(0),
    );
    env.install_crd::<Gadget>().await?;
    let gadgets: Api<Gadget> = Api::namespaced(env.client(), "default");
    gadgets
        .create(&PostParams::default(), &gadget("listed", 3))
        .await?;

    let list = env
        .kubectl_json(["get", "gadgets", "-n", "default"])
        .await?;
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["metadata"]["name"], "listed");
    assert_eq!(items[0]["spec"]["size"], 3);
    // The short name comes from the CRD, through kubectl's discovery.
    let by_short_name = env.kubectl_json(["get", "gd", "listed"]).await?;
    assert_eq!(by_short_name["kind"], "Gadget");

    let version = env.kubectl_json(["version"]).await?;
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    let client = version["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    println!("kubectl {client} against kube-apiserver {server}");
    // The version the assets folder was chosen for (KUBERATOR_K8S_VERSION, default 1.36.3).
    let expected = format!("v{}", kuberator::testing::kubernetes_version());
    assert_eq!(server, expected, "server version");
    assert_eq!(client, expected, "kubectl is not the assets' one");

    // Plain kubectl, as a user would type it.
    let output = env
        .kubectl()
        .args(["get", "namespace", "default", "-o", "name"])
        .output()
        .await?;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8(output.stdout)?.trim(),
        "namespace/default"
    );

    // The kubeconfig file works for kube-rs too.
    let kubeconfig = Kubeconfig::read_from(env.kubeconfig_path())?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    assert_eq!(config.default_namespace, "default");
    let from_file = kube::Client::try_from(config)?;
    let names: Vec<String> = Api::<Gadget>::namespaced(from_file, "default")
        .list(&Default::default())
        .await?
        .into_iter()
        .map(|g| g.name_any())
        .collect();
    assert_eq!(names, ["listed"]);

    // Raw paths, for benchmarks.
    let version_text = env.get_text("/version").await?;
    assert!(version_text.contains("\"gitVersion\""), "{version_text}");
    let metrics = env.metrics_text().await?;
    assert!(
        metrics.contains("apiserver_request_total"),
        "no request metrics"
    );
    Ok(())
}

#[tokio::test]
async fn drop_kills_and_reaps_processes_and_removes_the_folder() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let pids = [env.etcd_pid(), env.apiserver_pid()];
    let dir = env.dir().to_owned();
    for pid in pids {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} not running"
        );
    }
    assert!(dir.join("kube-apiserver.log").exists());
    drop(env);
    for pid in pids {
        // Reaped by drop itself: not even a zombie is left.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists after drop"
        );
    }
    assert!(!dir.exists(), "{} not removed", dir.display());

    // The same when the test panics while holding a TestEnv.
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let panicking = tokio::spawn(async move {
        let env = TestEnv::start().await.expect("start");
        sender
            .send(([env.etcd_pid(), env.apiserver_pid()], env.dir().to_owned()))
            .expect("send");
        panic!("intentional panic: the TestEnv must still be cleaned up");
    });
    let (pids, dir) = receiver.await?;
    assert!(panicking.await.is_err_and(|err| err.is_panic()));
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived a panic"
        );
    }
    assert!(!dir.exists());
    Ok(())
}

#[tokio::test]
async fn killed_test_process_takes_its_control_plane_along() -> anyhow::Result<()> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hold-testenv"))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = tokio::task::spawn_blocking(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            if line.starts_with("TESTENV ") {
                return anyhow::Ok(line);
            }
        }
        anyhow::bail!("helper exited without starting a TestEnv")
    });
    let line = match tokio::time::timeout(WAIT, reader).await {
        Ok(line) => line??,
        Err(_) => {
            child.kill()?;
            child.wait()?;
            anyhow::bail!("helper did not start a TestEnv within {WAIT:?}");
        }
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    let pids: Vec<u32> = fields[1..3]
        .iter()
        .map(|p| p.parse())
        .collect::<Result<_, _>>()?;
    let dir = PathBuf::from(fields[3]);
    for &pid in &pids {
        assert!(!process_gone(pid), "{pid} not running");
    }

    child.kill()?; // SIGKILL: no unwinding, no Drop
    child.wait()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pids.iter().all(|&pid| process_gone(pid)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "control plane {pids:?} outlived its killed test process"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without Drop nobody removes the folder; do it here.
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_environments_are_independent() -> anyhow::Result<()> {
    let (a, b) = tokio::try_join!(TestEnv::start(), TestEnv::start())?;
    assert_ne!(a.server_url(), b.server_url());
    assert_ne!(a.dir(), b.dir());
    assert_ne!(a.apiserver_pid(), b.apiserver_pid());
    assert_ne!(a.etcd_pid(), b.etcd_pid());

    let in_a: Api<ConfigMap> = Api::namespaced(a.client(), "default");
    let in_b: Api<ConfigMap> = Api::namespaced(b.client(), "default");
    let (only_in_a, only_in_b) = (config_map("only-in-a"), config_map("only-in-b"));
    let params = PostParams::default();
    tokio::try_join!(
        in_a.create(&params, &only_in_a),
        in_b.create(&params, &only_in_b),
    )?;
    assert!(in_a.get_opt("only-in-a").await?.is_some());
    assert!(in_a.get_opt("only-in-b").await?.is_none());
    assert!(in_b.get_opt("only-in-b").await?.is_some());
    assert!(in_b.get_opt("only-in-a").await?.is_none());

    // A CRD in one is not in the other.
    a.install_crd::<Gadget>().await?;
    let in_b_gadgets: Api<Gadget> = Api::namespaced(b.client(), "default");
    assert!(in_b_gadgets.list(&Default::default()).await.is_err());

    // Dropping one leaves the other working.
    drop(a);
    assert!(in_b.get_opt("only-in-b").await?.is_some());
    Ok(())
}

#[tokio::test]
async fn controller_manager_garbage_collects_dependents() -> anyhow::Result<()> {
    let env = TestEnv::builder()
        .controller_manager(true)
        .crd::<Gadget>()
        .start()
        .await?;
    assert!(env.controller_manager_pid().is_some());
    let gadgets: Api<Gadget> = Api::namespaced(env.client(), "default");
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client(), "default");

    let owner = gadgets
        .create(&PostParams::default(), &gadget("owner", 1))
        .await?;
    let owner_ref: OwnerReference = owner
        .controller_owner_ref(&())
        .expect("created objects have a uid");
    let mut dependent = config_map("dependent");
    dependent.metadata.owner_references = Some(vec![owner_ref]);
    config_maps
        .create(&PostParams::default(), &dependent)
        .await?;
    config_maps
        .create(&PostParams::default(), &config_map("bystander"))
        .await?;

    gadgets.delete("owner", &DeleteParams::background()).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while config_maps.get_opt("dependent").await?.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dependent ConfigMap not garbage-collected within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gadgets.get_opt("owner").await?.is_none());
    assert!(config_maps.get_opt("bystander").await?.is_some());
    Ok(())
}

#[tokio::test]
async fn missing_binaries_say_how_to_build_them() {
    let err = TestEnv::builder()
        .assets_dir("/nonexistent/kuberator-assets")
        .start()
        .await
        .expect_err("no binaries there");
    let message = format!("{err:#}");
    assert!(
        message.contains("scripts/control-plane.sh ensure"),
        "{message}"
    );
    assert!(message.contains("kube-apiserver"), "{message}");
    assert!(
        message.contains("/nonexistent/kuberator-assets"),
        "{message}"
    );
}
