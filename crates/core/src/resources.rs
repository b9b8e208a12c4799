//! CPU, memory and disk sizes: parsing of human sizes (`2g`, `512m`), and the ranges Cove accepts.

use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

pub const MIN_CPUS_MILLI: u32 = 100;
pub const MAX_CPUS_MILLI: u32 = 64_000;
pub const MIN_MEMORY: u64 = 64 * MIB;
pub const MAX_MEMORY: u64 = 512 * GIB;
pub const MIN_DISK: u64 = GIB;
pub const MAX_DISK: u64 = 16 * TIB;

/// What a workspace may use. CPUs are counted in thousandths so that `0.5` is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpus_milli: u32,
    pub memory_bytes: u64,
    /// A size for the persistent volume, where the engine's volume driver can enforce one.
    pub disk_bytes: Option<u64>,
}

impl Default for Resources {
    fn default() -> Self {
        Self { cpus_milli: 2_000, memory_bytes: 2 * GIB, disk_bytes: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourcesError {
    #[error("cpus must be between 0.1 and 64 (got {0})")]
    Cpus(String),
    #[error("memory must be between 64m and 512g (got {0})")]
    Memory(String),
    #[error("disk must be between 1g and 16t (got {0})")]
    Disk(String),
    #[error("{0:?} is not a size; write a number with an optional unit: 512m, 2g, 1.5g, 10gib")]
    BadSize(String),
}

impl Resources {
    /// Builds resources from user-facing values, checking every range.
    pub fn new(cpus: f64, memory_bytes: u64, disk_bytes: Option<u64>) -> Result<Self, ResourcesError> {
        let milli = cpus * 1000.0;
        if !milli.is_finite() || milli < f64::from(MIN_CPUS_MILLI) || milli > f64::from(MAX_CPUS_MILLI) {
            return Err(ResourcesError::Cpus(cpus.to_string()));
        }
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory_bytes) {
            return Err(ResourcesError::Memory(format_size(memory_bytes)));
        }
        if let Some(disk) = disk_bytes {
            if !(MIN_DISK..=MAX_DISK).contains(&disk) {
                return Err(ResourcesError::Disk(format_size(disk)));
            }
        }
        Ok(Self {
            // In range 100..=64000 after the check above, so the cast cannot truncate.
            cpus_milli: milli.round() as u32,
            memory_bytes,
            disk_bytes,
        })
    }

    pub fn cpus(&self) -> f64 {
        f64::from(self.cpus_milli) / 1000.0
    }

    /// `2 cpu / 2g` as shown by `cove ls`.
    pub fn summary(&self) -> String {
        format!("{} cpu / {}", self.cpus(), format_size(self.memory_bytes))
    }
}

/// Parses `512m`, `2g`, `1.5G`, `10GiB`, `1073741824` (bytes). Units are powers of 1024,
/// as `docker run --memory` reads them.
pub fn parse_size(input: &str) -> Result<u64, ResourcesError> {
    let bad = || ResourcesError::BadSize(input.to_string());
    let s = input.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim();
    let unit = unit.strip_suffix("ib").or_else(|| unit.strip_suffix('b')).unwrap_or(unit);
    let multiplier = match unit {
        "" => 1,
        "k" => KIB,
        "m" => MIB,
        "g" => GIB,
        "t" => TIB,
        _ => return Err(bad()),
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// The shortest exact form among `t`, `g`, `m`, `k`, else one decimal of the largest unit.
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [("t", TIB), ("g", GIB), ("m", MIB), ("k", KIB)] {
        if bytes >= size {
            if bytes.is_multiple_of(size) {
                return format!("{}{unit}", bytes / size);
            }
            return format!("{:.1}{unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes}")
}

/// Parses a duration with a unit: `90s`, `30m`, `2h`, `1d`, or `0`.
pub fn parse_duration(input: &str) -> Result<u32, String> {
    let s = input.trim().to_ascii_lowercase();
    if s == "0" {
        return Ok(0);
    }
    let bad = || format!("{input:?} is not a duration; write a number with a unit: 90s, 30m, 2h, 1d (or 0)");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = s.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number.checked_mul(unit).and_then(|s| u32::try_from(s).ok()).ok_or_else(bad)
}

/// `30m`, `90s`, `2h`, `1d`: the largest exact unit.
pub fn format_duration(seconds: u64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds >= size && seconds.is_multiple_of(size) {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_size(input: &str, expected: Option<u64>) {
        assert_eq!(parse_size(input).ok(), expected, "input {input:?}");
    }

    #[test]
    fn sizes() {
        check_size("2g", Some(2 * GIB));
        check_size("2G", Some(2 * GIB));
        check_size("2GiB", Some(2 * GIB));
        check_size("2gb", Some(2 * GIB));
        check_size("512m", Some(512 * MIB));
        check_size("1.5g", Some(GIB + GIB / 2));
        check_size("1024", Some(1024));
        check_size(" 4k ", Some(4096));
        check_size("", None);
        check_size("g", None);
        check_size("2x", None);
        check_size("-1g", None);
        check_size("1e999g", None);
        check_size("two", None);
    }

    #[test]
    fn durations() {
        for (input, expected) in [
            ("90s", Some(90)),
            ("30m", Some(1800)),
            ("2h", Some(7200)),
            ("1d", Some(86_400)),
            ("0", Some(0)),
            ("30", None),
            ("m", None),
            ("-1m", None),
            ("1y", None),
            ("9999999999s", None),
            ("99999999999999999999d", None),
        ] {
            assert_eq!(parse_duration(input).ok(), expected, "{input:?}");
        }
        assert_eq!(format_duration(1800), "30m");
        assert_eq!(format_duration(90), "90s");
        assert_eq!(format_duration(0), "0s");
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(2 * GIB), "2g");
        assert_eq!(format_size(512 * MIB), "512m");
        assert_eq!(format_size(GIB + GIB / 2), "1.5g");
        assert_eq!(format_size(100), "100");
    }

    #[test]
    fn ranges() {
        assert!(Resources::new(2.0, 2 * GIB, None).is_ok());
        assert!(Resources::new(0.1, MIN_MEMORY, Some(MIN_DISK)).is_ok());
        assert_eq!(Resources::new(0.05, GIB, None), Err(ResourcesError::Cpus("0.05".into())));
        assert_eq!(Resources::new(65.0, GIB, None), Err(ResourcesError::Cpus("65".into())));
        assert!(matches!(Resources::new(f64::NAN, GIB, None), Err(ResourcesError::Cpus(_))));
        assert_eq!(Resources::new(1.0, MIB, None), Err(ResourcesError::Memory("1m".into())));
        assert_eq!(Resources::new(1.0, GIB, Some(MIB)), Err(ResourcesError::Disk("1m".into())));
        assert_eq!(Resources::new(0.5, GIB, None).map(|r| r.cpus_milli), Ok(500));
    }
}
