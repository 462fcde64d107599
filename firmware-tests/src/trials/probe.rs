//! A scoring client that runs through a whole trial and classifies every answer: the old
//! version, the new one, a refused connection (the agent was down), or something that must
//! never happen (an error status, wrong predictions, a version nobody deployed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::HttpResponse;

/// The answers seen, by kind.
#[derive(Debug, Default, Clone)]
pub struct Served {
    /// 200 with scikit-learn's predictions, by the version named in the answer's header.
    pub by_version: std::collections::BTreeMap<String, u64>,
    /// No connection (the agent process was not running).
    pub refused: u64,
    /// Answers that break the promise, with the first few described.
    pub wrong: u64,
    pub wrong_examples: Vec<String>,
}

/// Runs until stopped; returns what it saw.
#[derive(Debug)]
pub struct Probe {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Served>,
}

impl Probe {
    /// Scores `addr` every `every`, accepting the versions in `versions` (`m:1`, `m:2`).
    pub fn start(addr: SocketAddr, versions: Vec<String>, every: Duration) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let body = serde_json::json!({"data": crate::expected("diabetes")["inputs"]});
            let mut served = Served::default();
            while !running.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(10), crate::score(addr, &body)).await
                {
                    Ok(Ok(response)) => judge(&response, &versions, &mut served),
                    Ok(Err(_)) => served.refused += 1,
                    Err(_) => note_wrong(&mut served, "no answer within 10 s".into()),
                }
                tokio::time::sleep(every).await;
            }
            served
        });
        Probe { stop, task }
    }

    pub async fn finish(self) -> Served {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

fn judge(response: &HttpResponse, versions: &[String], served: &mut Served) {
    let version = response
        .header(super::MODEL_HEADER)
        .unwrap_or("")
        .to_owned();
    if response.status != 200 {
        let body: String = response.body.chars().take(200).collect();
        note_wrong(served, format!("status {}: {body}", response.status));
    } else if !versions.contains(&version) {
        note_wrong(served, format!("answered by {version:?}"));
    } else if let Err(why) = crate::diabetes_predictions_match(response) {
        note_wrong(served, format!("{version}: {why}"));
    } else {
        *served.by_version.entry(version).or_default() += 1;
    }
}

fn note_wrong(served: &mut Served, what: String) {
    served.wrong += 1;
    if served.wrong_examples.len() < 3 {
        served.wrong_examples.push(what);
    }
}
