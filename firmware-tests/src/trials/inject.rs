//! Injects one trial's fault at moments drawn from its seed, and says where each landed.

use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use edgeship_proto::v1 as pb;

use super::checks::{Files, walk};
use super::world::World;
use super::{FaultKind, MODEL_HEADER, MODEL_ID, Rng};
use crate::faultnet::LinkMode;

/// The fault as it happened.
#[derive(Debug)]
pub struct Injected {
    pub description: String,
    /// When the fault was over (the process restarted, the link cleared, the disk freed).
    pub healed: Instant,
    /// Whether the agent process was down for part of the trial (its endpoint refusing
    /// connections then is expected).
    pub agent_was_down: bool,
    /// A label the hub acknowledged just before it was killed.
    pub label: Option<(String, String)>,
    /// Where each agent kill landed in the roll.
    pub phases: Vec<&'static str>,
}

pub async fn inject(
    kind: FaultKind,
    world: &mut World,
    rng: &mut Rng,
    model_bytes: u64,
    new_files: &Files,
) -> Injected {
    // A roll on loopback takes tens of milliseconds plus a few ms a MiB (download, check,
    // staging, load, self-test, switch, report): most faults strike inside that span, one in
    // four up to three times later (reports, the hub's bookkeeping).
    let mut span = 30 + (model_bytes >> 20) * 10;
    if rng.below(4) == 0 {
        span *= 3;
    }
    let mut label = None;
    let mut agent_was_down = false;
    let mut phases = Vec::new();
    let description = match kind {
        FaultKind::AgentKill => {
            agent_was_down = true;
            let mut landed = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let wait = kill_moment(world, rng, span, new_files).await;
                let phase = phase(world, new_files).await;
                world.kill_agent();
                phases.push(phase);
                let down = rng.millis(0, 1000);
                tokio::time::sleep(down).await;
                world.start_agent();
                landed.push(format!("{phase} (+{wait:?}, down {down:?})"));
            }
            format!("kill -9 at {}", landed.join(", "))
        }
        FaultKind::CacheDamage => {
            agent_was_down = true;
            let wait = kill_moment(world, rng, span, new_files).await;
            let phase = phase(world, new_files).await;
            world.kill_agent();
            phases.push(phase);
            let mut damage = vec![damage_a_file(&world.agent_dir(), rng)];
            if rng.below(2) == 0 {
                damage.push(damage_a_file(&world.agent_dir(), rng));
            }
            world.start_agent();
            format!("kill -9 at {phase} (+{wait:?}), then {}", damage.join("; "))
        }
        FaultKind::HubKill => {
            let wait = rng.millis(0, span);
            tokio::time::sleep(wait).await;
            let value = format!("t{}", rng.next_u64() % 1_000_000);
            if set_label(world, "trial", &value).await {
                label = Some(("trial".to_owned(), value));
            }
            world.kill_hub();
            let down = rng.millis(0, 2000);
            tokio::time::sleep(down).await;
            world.start_hub();
            format!("kill -9 after +{wait:?}, just after an acknowledged write; down {down:?}")
        }
        FaultKind::BrokerRestart => {
            let wait = rng.millis(0, span);
            tokio::time::sleep(wait).await;
            world.kill_broker();
            let down = rng.millis(0, 3000);
            tokio::time::sleep(down).await;
            world.start_broker();
            format!("Mosquitto kill -9 after +{wait:?}, down {down:?}")
        }
        FaultKind::Partition => {
            let wait = rng.millis(0, span);
            tokio::time::sleep(wait).await;
            let (mode, name) = if rng.below(2) == 0 {
                (LinkMode::Blackhole, "blackholed")
            } else {
                (LinkMode::Down, "down (connections cut and refused)")
            };
            let proxy = world.proxy.as_ref().expect("a proxied trial");
            proxy.set(mode);
            let hold = rng.millis(500, 6000);
            tokio::time::sleep(hold).await;
            proxy.set(LinkMode::Clear);
            format!("link {name} after +{wait:?} for {hold:?}")
        }
        FaultKind::SlowLink => {
            let delay = rng.millis(20, 300);
            let bytes_per_second = [0, 256 << 10, 1 << 20, 4 << 20][rng.below(4) as usize];
            let proxy = world.proxy.as_ref().expect("a proxied trial");
            proxy.set(LinkMode::Slow {
                delay,
                bytes_per_second,
            });
            let hold = rng.millis(1000, 5000);
            tokio::time::sleep(hold).await;
            proxy.set(LinkMode::Clear);
            let cap = match bytes_per_second {
                0 => "no cap".to_owned(),
                rate => format!("{} KiB/s", rate >> 10),
            };
            format!("{delay:?} each way, {cap}, for {hold:?}")
        }
        FaultKind::Flapping => {
            let proxy = world.proxy.as_ref().expect("a proxied trial");
            let hold = rng.millis(1000, 5000);
            let until = Instant::now() + hold;
            let mut cuts = 0;
            while Instant::now() < until {
                tokio::time::sleep(rng.millis(100, 1500)).await;
                proxy.cut();
                cuts += 1;
            }
            format!("{cuts} connection cuts over {hold:?}")
        }
        FaultKind::DiskFull => {
            let hold = rng.millis(500, 3000);
            tokio::time::sleep(hold).await;
            let tmpfs = world.tmpfs.as_ref().expect("a tmpfs trial");
            let used = super::checks::bytes_under(&world.agent_dir());
            let _ = tmpfs.resize(model_bytes * 4 + (64 << 20));
            format!("disk full for {hold:?} ({used} bytes in use), then enlarged")
        }
    };
    Injected {
        description,
        healed: Instant::now(),
        agent_was_down,
        label,
        phases,
    }
}

/// Waits for an agent kill's moment and returns how long it waited: a random time within
/// `span`, or, on half the draws, the moment the roll reaches a stage drawn at random (the
/// new version's download under way, or its files staged and not yet switched to), polled
/// every millisecond and given up after three spans. A roll on loopback is over in tens of
/// milliseconds, so random moments alone would seldom land inside it.
async fn kill_moment(world: &World, rng: &mut Rng, span: u64, new_files: &Files) -> Duration {
    let started = Instant::now();
    let target = rng.below(4);
    if target >= 2 {
        let wait = rng.millis(0, span);
        tokio::time::sleep(wait).await;
        return wait;
    }
    let dir = world.agent_dir();
    let give_up = Duration::from_millis(span * 3);
    while started.elapsed() < give_up {
        let reached = if target == 0 {
            new_files
                .values()
                .any(|digest| dir.join("blobs/partial").join(digest).exists())
        } else {
            dir.join("models").join(MODEL_ID).join("2").exists()
        };
        if reached {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

/// Where the roll to the new version stands on the device, as seen from outside: its
/// download, its check and staging, the switch, or after it.
async fn phase(world: &World, new_files: &Files) -> &'static str {
    let dir = world.agent_dir();
    let mut any_partial = false;
    let mut all_cached = true;
    for digest in new_files.values() {
        any_partial |= dir.join("blobs/partial").join(digest).exists();
        all_cached &= dir.join("blobs/sha256").join(digest).exists();
    }
    let staged = dir.join("models").join(MODEL_ID).join("2").exists();
    if any_partial {
        return "download";
    }
    if !all_cached {
        return "before download";
    }
    if !staged {
        return "verify";
    }
    let body = serde_json::json!({"data": crate::expected("diabetes")["inputs"]});
    let answer = tokio::time::timeout(
        Duration::from_millis(200),
        crate::score(world.endpoint(), &body),
    )
    .await;
    match answer {
        Ok(Ok(a)) if a.header(MODEL_HEADER) == Some("m:2") => "after the switch",
        _ => "stage, self-test or switch",
    }
}

/// Sets a hub-side label on the trial's device; whether the hub acknowledged it.
async fn set_label(world: &World, key: &str, value: &str) -> bool {
    let Ok(mut fleet) = pb::fleet_client::FleetClient::connect(world.hub_url()).await else {
        return false;
    };
    fleet
        .set_device_labels(pb::SetDeviceLabelsRequest {
            name: format!("devices/{}", world.device),
            set: [(key.to_owned(), value.to_owned())].into(),
            remove: Vec::new(),
        })
        .await
        .is_ok()
}

/// Damages one file of the agent's data folder, drawn at random: truncated, a byte flipped,
/// garbage appended, or removed. Says what it did.
fn damage_a_file(dir: &Path, rng: &mut Rng) -> String {
    let mut files = walk(dir);
    files.sort();
    if files.is_empty() {
        return "nothing to damage".into();
    }
    let file = &files[rng.below(files.len() as u64) as usize];
    let shown = file.strip_prefix(dir).unwrap_or(file).display().to_string();
    let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let how = rng.below(4);
    let result = match how {
        0 => {
            let keep = if len == 0 { 0 } else { rng.below(len) };
            std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .and_then(|f| f.set_len(keep))
                .map(|()| format!("{shown} truncated from {len} to {keep} bytes"))
        }
        1 if len > 0 => {
            let at = rng.below(len);
            flip_byte(file, at).map(|()| format!("{shown}: byte {at} of {len} flipped"))
        }
        2 => std::fs::OpenOptions::new()
            .append(true)
            .open(file)
            .and_then(|mut f| f.write_all(b"\x00garbage\xff"))
            .map(|()| format!("{shown}: garbage appended")),
        _ => std::fs::remove_file(file).map(|()| format!("{shown} removed")),
    };
    result.unwrap_or_else(|err| format!("{shown}: could not damage it ({err})"))
}

fn flip_byte(file: &Path, at: u64) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let mut handle = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    handle.seek(SeekFrom::Start(at))?;
    std::io::Read::read_exact(&mut handle, &mut byte)?;
    byte[0] ^= 0x5a;
    handle.seek(SeekFrom::Start(at))?;
    handle.write_all(&byte)
}
