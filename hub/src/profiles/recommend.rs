//! From a device's figures to a recommendation (Azure ML's `Model.profile`: the CPU and memory
//! to give the model), and the properties that store it on the model version, per device
//! class. Pure.

use std::collections::BTreeMap;

use super::DeviceProfile;

/// The least a recommendation asks for: a tenth of a core, 16 MiB.
pub const MIN_CPU: f64 = 0.1;
pub const MIN_MEMORY_BYTES: u64 = 16 * MIB;
const MIB: u64 = 1024 * 1024;
/// Headroom on the memory measured, in percent.
const MEMORY_HEADROOM_PERCENT: u64 = 20;

/// What to give the model on a device of the profiled class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recommendation {
    /// Index of the level it comes from: the one with the most requests per second.
    pub level: usize,
    /// Cores: those kept busy at that level, rounded up to a tenth.
    pub cpu: f64,
    /// The memory the model took when it loaded plus the most it grew under load, with 20%
    /// headroom, rounded up to a whole MiB.
    pub memory_bytes: u64,
}

/// The recommendation for `profile`; `None` when it has no levels.
pub fn recommend(profile: &DeviceProfile) -> Option<Recommendation> {
    // The first of equals: fewer connections for the same throughput.
    let (level, best) = profile.levels.iter().enumerate().reduce(|best, next| {
        if next.1.requests_per_second() > best.1.requests_per_second() {
            next
        } else {
            best
        }
    })?;
    let cores = if best.cpu_cores.is_finite() {
        best.cpu_cores.max(0.0)
    } else {
        0.0
    };
    // A hair under a tenth is taken as that tenth: 0.6 measured as 0.6000000001 stays 0.6.
    let tenths = (cores * 10.0 - 1e-9).ceil();
    let cpu = (tenths / 10.0).max(MIN_CPU);
    let peak = profile
        .levels
        .iter()
        .map(|l| l.peak_rss_bytes)
        .max()
        .unwrap_or(0);
    let grown = u128::from(profile.load_bytes) + u128::from(peak);
    let used = grown.saturating_sub(u128::from(profile.start_rss_bytes));
    let with_headroom = (used * u128::from(100 + MEMORY_HEADROOM_PERCENT)).div_ceil(100);
    let mib = with_headroom.div_ceil(u128::from(MIB));
    let memory_bytes = u64::try_from(mib * u128::from(MIB))
        .unwrap_or(u64::MAX)
        .max(MIN_MEMORY_BYTES);
    Some(Recommendation {
        level,
        cpu,
        memory_bytes,
    })
}

/// The property names a profile of `class` writes: `profile/<class>/cpu`, ….
pub fn property_keys(class: &str) -> Vec<String> {
    [
        "cpu",
        "memory_mb",
        "rps",
        "concurrency",
        "p50_ms",
        "p99_ms",
        "entry_module",
        "profiled_at",
    ]
    .iter()
    .map(|name| format!("profile/{class}/{name}"))
    .collect()
}

/// The properties that store `recommendation` for `class`; the same keys every time, so a
/// later profile of the class replaces them all.
pub fn properties(
    class: &str,
    profile: &DeviceProfile,
    recommendation: &Recommendation,
    entry_module: Option<&str>,
    profiled_at: &str,
) -> BTreeMap<String, String> {
    let best = profile
        .levels
        .get(recommendation.level)
        .cloned()
        .unwrap_or_default();
    let values = [
        format!("{:.1}", recommendation.cpu),
        (recommendation.memory_bytes / MIB).to_string(),
        format!("{:.1}", best.requests_per_second()),
        best.concurrency.to_string(),
        milliseconds(best.p50_ms),
        milliseconds(best.p99_ms),
        entry_module.unwrap_or("none").to_owned(),
        profiled_at.to_owned(),
    ];
    property_keys(class).into_iter().zip(values).collect()
}

fn milliseconds(ms: f64) -> String {
    format!("{:.2}", if ms.is_finite() { ms } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::Level;

    fn level(concurrency: u32, requests: u64, cpu_cores: f64, peak_mib: u64) -> Level {
        Level {
            concurrency,
            requests,
            errors: 0,
            seconds: 2.0,
            p50_ms: 1.25,
            p99_ms: 4.5,
            cpu_cores,
            peak_rss_bytes: peak_mib * MIB,
        }
    }

    fn profile(levels: Vec<Level>) -> DeviceProfile {
        DeviceProfile {
            levels,
            load_bytes: 20 * MIB,
            start_rss_bytes: 100 * MIB,
            cpu_count: 2,
        }
    }

    #[test]
    fn the_level_of_most_throughput_sets_the_cpu_rounded_up_to_a_tenth() {
        let profile = profile(vec![
            level(1, 1000, 0.31, 110),
            level(2, 1800, 0.52, 130),
            level(4, 1700, 0.9, 120),
        ]);
        let recommendation = recommend(&profile).expect("levels");
        assert_eq!(recommendation.level, 1);
        assert_eq!(recommendation.cpu, 0.6);
        // (20 MiB loaded + 130 MiB peak - 100 MiB at start) × 1.2 = 60 MiB.
        assert_eq!(recommendation.memory_bytes, 60 * MIB);
    }

    #[test]
    fn tiny_or_broken_figures_get_the_floors() {
        let mut idle = level(1, 10, 0.0, 90);
        idle.cpu_cores = f64::NAN;
        let mut profile = profile(vec![idle]);
        profile.load_bytes = 0;
        let recommendation = recommend(&profile).expect("a level");
        assert_eq!(recommendation.cpu, MIN_CPU);
        assert_eq!(recommendation.memory_bytes, MIN_MEMORY_BYTES);
        let exact = DeviceProfile {
            levels: vec![level(1, 10, 0.6000000001, 0)],
            ..profile
        };
        assert_eq!(recommend(&exact).expect("a level").cpu, 0.6);
        assert_eq!(recommend(&DeviceProfile::default()), None);
    }

    #[test]
    fn memory_rounds_up_to_a_whole_mib() {
        let mut profile = profile(vec![level(1, 10, 0.2, 0)]);
        profile.start_rss_bytes = 0;
        profile.load_bytes = 20 * MIB;
        profile.levels[0].peak_rss_bytes = 1;
        // (20 MiB + 1 B) × 1.2 = 24 MiB and a bit: 25 MiB.
        assert_eq!(recommend(&profile).expect("a level").memory_bytes, 25 * MIB);
    }

    #[test]
    fn properties_name_the_class_and_hold_the_best_level() {
        let profile = profile(vec![level(1, 1000, 0.31, 110), level(2, 1800, 0.52, 130)]);
        let recommendation = recommend(&profile).expect("levels");
        let properties = properties(
            "x86_64-2cpu",
            &profile,
            &recommendation,
            None,
            "2026-01-02T03:04:05Z",
        );
        let expected: BTreeMap<String, String> = [
            ("concurrency", "2"),
            ("cpu", "0.6"),
            ("entry_module", "none"),
            ("memory_mb", "60"),
            ("p50_ms", "1.25"),
            ("p99_ms", "4.50"),
            ("profiled_at", "2026-01-02T03:04:05Z"),
            ("rps", "900.0"),
        ]
        .into_iter()
        .map(|(k, v)| (format!("profile/x86_64-2cpu/{k}"), v.to_owned()))
        .collect();
        assert_eq!(properties, expected);
        for key in properties.keys() {
            edgeship_domain::names::key("property", key).expect("a valid key");
        }
    }
}
