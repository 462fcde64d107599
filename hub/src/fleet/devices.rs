//! Device records: what each device announced (birth, Last Will) and last reported, plus the
//! labels set through the API. Births and reports arrive in batches from the MQTT link, one
//! flush per batch.

use std::collections::BTreeMap;

use edgeship_domain::{Birth, ReportedState, names};

use super::model::Device;
use super::{Fleet, FleetError, decode, encode};
use crate::now_ms;

pub(super) fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), FleetError> {
    for (key, value) in labels {
        super::deployments::validate_label(key, value)?;
    }
    Ok(())
}

fn valid_id(id: &str) -> Result<(), FleetError> {
    names::device_id(id).map_err(|e| FleetError::InvalidArgument(e.0))
}

/// What devices sent since the last batch; the newest of each kind per device.
#[derive(Debug, Default)]
pub struct DeviceNews {
    pub births: Vec<Birth>,
    pub reports: Vec<ReportedState>,
}

impl Fleet {
    pub fn all_devices(&self) -> Result<Vec<Device>, FleetError> {
        let mut all = Vec::new();
        for entry in self.devices.iter() {
            let (_, bytes) = entry?;
            all.push(decode::<Device>(&bytes, "device")?);
        }
        Ok(all)
    }

    pub fn get_device(&self, id: &str) -> Result<Device, FleetError> {
        valid_id(id)?;
        self.device(id)?
            .ok_or_else(|| FleetError::NotFound(format!("device {id} is not known to the hub")))
    }

    pub(super) fn device(&self, id: &str) -> Result<Option<Device>, FleetError> {
        self.devices
            .get(id.as_bytes())?
            .map(|bytes| decode(&bytes, "device"))
            .transpose()
    }

    pub(super) fn put_device(&self, device: &Device) -> Result<(), FleetError> {
        self.devices.insert(device.id.as_bytes(), encode(device))?;
        Ok(())
    }

    pub fn set_labels(
        &self,
        id: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<Device, FleetError> {
        valid_id(id)?;
        validate_labels(&set)?;
        let _guard = self.guard();
        let mut device = self
            .device(id)?
            .ok_or_else(|| FleetError::NotFound(format!("device {id} is not known to the hub")))?;
        for key in &remove {
            device.user_labels.remove(key);
        }
        device.user_labels.extend(set);
        self.put_device(&device)?;
        self.db.flush()?;
        self.reconcile_locked(Some(id))?;
        self.get_device(id)
    }

    /// Applies a batch of births and reports: records them, flushes once, and recomputes the
    /// desired state of devices whose labels or capabilities changed or that have none yet.
    /// A bad entry is logged and skipped; it never stops the rest of the batch.
    pub fn on_device_news(&self, news: DeviceNews) -> Result<(), FleetError> {
        let _guard = self.guard();
        // Reports first: a device's Last Will (a birth with online=false) that arrived with
        // its last report must leave it offline.
        let mut recompute = Vec::new();
        for report in news.reports {
            // A job that failed on its device leaves the device's desired state.
            if self.apply_job_reports(&report.device_id, &report.jobs)? {
                recompute.push(report.device_id.clone());
            }
            self.record_report(report)?;
        }
        for birth in news.births {
            let id = birth.device_id.clone();
            match self.record_birth(birth) {
                Ok(true) if !recompute.contains(&id) => recompute.push(id),
                Ok(_) => {}
                Err(FleetError::InvalidArgument(why)) => {
                    tracing::warn!(device = %id, error = %why, "device birth rejected");
                }
                Err(err) => return Err(err),
            }
        }
        self.db.flush()?;
        for id in recompute {
            self.reconcile_locked(Some(&id))?;
        }
        self.nudge.notify_one();
        Ok(())
    }

    /// Records a birth (or the Last Will, `online = false`); says whether the device's desired
    /// state needs computing.
    fn record_birth(&self, birth: Birth) -> Result<bool, FleetError> {
        valid_id(&birth.device_id)?;
        let mut device = self.device(&birth.device_id)?.unwrap_or_else(|| Device {
            id: birth.device_id.clone(),
            ..Device::default()
        });
        device.online = birth.online;
        device.last_seen_ms = now_ms();
        let mut changed = false;
        if birth.online {
            validate_labels(&birth.labels)?;
            changed =
                birth.labels != device.reported_labels || birth.capabilities != device.capabilities;
            device.reported_labels = birth.labels;
            device.agent_version = birth.agent_version;
            device.capabilities = birth.capabilities;
        }
        self.put_device(&device)?;
        if device.online {
            tracing::info!(device = %device.id, agent = %device.agent_version, "device online");
        } else {
            tracing::info!(device = %device.id, "device offline");
        }
        Ok(changed || device.desired_generation == 0)
    }

    fn record_report(&self, report: ReportedState) -> Result<(), FleetError> {
        valid_id(&report.device_id)?;
        let mut device = self.device(&report.device_id)?.unwrap_or_else(|| Device {
            id: report.device_id.clone(),
            ..Device::default()
        });
        device.online = true;
        device.last_seen_ms = now_ms();
        device.applied_generation = report.applied_generation.min(device.desired_generation);
        device.workloads = report.workloads;
        self.put_device(&device)
    }
}
