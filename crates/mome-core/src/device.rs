//! Device selection: `auto`, `cpu`, `cuda` or `cuda:N`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tch::Device;

use crate::{Error, Result};

/// A device as the user writes it; [`DeviceSpec::resolve`] turns it into a
/// [`tch::Device`] after checking that it exists.
///
/// ```
/// use mome_core::DeviceSpec;
/// let d: DeviceSpec = "cuda:1".parse().unwrap();
/// assert_eq!(d, DeviceSpec::Cuda(1));
/// assert_eq!(d.to_string(), "cuda:1");
/// assert_eq!("cpu".parse::<DeviceSpec>().unwrap().resolve().unwrap(), tch::Device::Cpu);
/// assert!("gpu".parse::<DeviceSpec>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// `cuda:0` when CUDA is available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N (`cuda` means `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                if let Some(n) = t.strip_prefix("cuda:") {
                    n.parse::<usize>().map(Self::Cuda).map_err(|_| {
                        Error::Device(format!(
                            "`{s}`: bad CUDA ordinal `{n}` (expected auto, cpu, cuda or cuda:N)"
                        ))
                    })
                } else {
                    Err(Error::Device(format!(
                        "`{s}`: unknown device (expected auto, cpu, cuda or cuda:N)"
                    )))
                }
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl DeviceSpec {
    /// Resolves to a usable device: errors when CUDA is asked for but not available,
    /// or when the ordinal is out of range.
    pub fn resolve(&self) -> Result<Device> {
        match *self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(if tch::Cuda::is_available() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }),
            Self::Cuda(n) => {
                if !tch::Cuda::is_available() {
                    return Err(Error::Device(format!(
                        "cuda:{n} requested but CUDA is not available (no GPU, driver, or a \
                         CPU-only libtorch); use --device cpu or auto"
                    )));
                }
                let count = tch::Cuda::device_count().max(0) as usize;
                if n >= count {
                    return Err(Error::Device(format!(
                        "cuda:{n} requested but only {count} CUDA device(s) exist (cuda:0..cuda:{})",
                        count.saturating_sub(1)
                    )));
                }
                Ok(Device::Cuda(n))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_serde() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!(" CPU ".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "tpu"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        let j = serde_json::to_string(&DeviceSpec::Cuda(2)).unwrap();
        assert_eq!(j, "\"cuda:2\"");
        let back: DeviceSpec = serde_json::from_str(&j).unwrap();
        assert_eq!(back, DeviceSpec::Cuda(2));
        assert!(serde_json::from_str::<DeviceSpec>("\"nope\"").is_err());
    }

    #[test]
    fn resolve_checks_availability() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), Device::Cpu);
        let auto = DeviceSpec::Auto.resolve().unwrap();
        if tch::Cuda::is_available() {
            assert_eq!(auto, Device::Cuda(0));
            let e = DeviceSpec::Cuda(1000).resolve().unwrap_err().to_string();
            assert!(e.contains("cuda:1000"), "{e}");
        } else {
            assert_eq!(auto, Device::Cpu);
            let e = DeviceSpec::Cuda(0).resolve().unwrap_err().to_string();
            assert!(e.contains("not available"), "{e}");
        }
    }
}
