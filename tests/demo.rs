//! The demo behind `make demo`, run as a test: every step checks its claim through the API
//! (children created and garbage-collected, status and events as shown).

use kuberator_examples::demo::{Options, run};

#[tokio::test]
async fn the_demo_runs_start_to_finish() {
    let report = run(Options {
        keep: false,
        quiet: true,
    })
    .await
    .expect("the demo failed");
    assert_eq!(report.published, 3);
    assert_eq!(
        report.validation_error,
        "spec.port 70000 is not a valid port (1-65535)"
    );
    assert!(report.published_event_count >= 2, "{report:?}");
    assert!(report.children_collected);
}
