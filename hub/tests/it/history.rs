//! Rollout history stays bounded: a deployment applied and deleted over and over keeps its
//! newest records, in order, and its revisions go on counting.

use edgeship_hub::fleet::rollouts::HISTORY_KEPT;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;

use crate::support::{TestHub, apply, register_diabetes};

#[tokio::test]
async fn apply_and_delete_cycles_keep_the_newest_history_and_count_revisions_on() {
    let hub = TestHub::start().await;
    let mut registry = hub.client().await;
    register_diabetes(&mut registry, "diabetes").await;
    let url = hub.url();
    let mut deployments = DeploymentsClient::connect(url.clone())
        .await
        .expect("connect");
    let manifest =
        "name: cycled\nmodel: diabetes:1\nendpoint: {port: 5999}\ntarget: {devices: [nowhere]}\n";
    // Each cycle adds two records (the rollout, the deletion): past the bound by a fifth.
    let cycles = HISTORY_KEPT * 6 / 10;
    for _ in 0..cycles {
        apply(&url, manifest).await.expect("applied");
        deployments
            .delete_deployment(pb::DeleteDeploymentRequest {
                name: "deployments/cycled".into(),
            })
            .await
            .expect("deleted");
    }
    apply(&url, manifest).await.expect("applied once more");
    let history = deployments
        .list_rollout_history(pb::ListRolloutHistoryRequest {
            name: "deployments/cycled".into(),
        })
        .await
        .expect("history")
        .into_inner()
        .rollouts;
    assert_eq!(history.len(), HISTORY_KEPT, "the newest records only");
    let newest = history.last().expect("records");
    assert!(
        !newest.note,
        "the last apply's rollout is the newest record"
    );
    assert_eq!(
        newest.revision,
        cycles as u64 + 1,
        "revisions count on past dropped records"
    );
    assert!(
        history
            .windows(2)
            .all(|pair| pair[0].revision <= pair[1].revision),
        "in order"
    );
    let deletions = history.iter().filter(|r| r.note).count();
    assert_eq!(
        deletions,
        HISTORY_KEPT / 2,
        "every kept cycle's deletion is there"
    );
}
