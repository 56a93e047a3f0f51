//! `train.device` / `--device`: "cpu", "cuda" or "cuda:N" → a candle `Device`.
//!
//! No `cfg` here: candle always has `Device::new_cuda`, which fails at run time in a
//! build without the `cuda` feature; we check first so the message says how to fix it.

use candle_core::Device;

/// A device that cannot be opened or cannot compute as asked, with how to go on.
#[derive(Debug, thiserror::Error)]
#[error("device {device:?}: {message}")]
pub struct DeviceError {
    pub device: String,
    pub message: String,
}

/// A parsed device name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
}

/// Parses "cpu", "cuda" or "cuda:N".
pub fn parse_device_name(name: &str) -> Result<DeviceSpec, String> {
    match name {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        _ => name
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| format!("unknown device {name:?}: use \"cpu\", \"cuda\" or \"cuda:N\"")),
    }
}

/// The command that builds the binary with CUDA.
pub const CUDA_BUILD: &str = "cargo build --release --features cuda";

/// Whether `name` asks for CUDA in a build (or on a machine) that has none: callers
/// that know where the name came from check this first, to say so.
pub fn is_missing_cuda(name: &str) -> bool {
    matches!(parse_device_name(name), Ok(DeviceSpec::Cuda(_)))
        && !candle_core::utils::cuda_is_available()
}

/// Opens the device named `name`.
pub fn open(name: &str) -> Result<Device, DeviceError> {
    let spec = parse_device_name(name).map_err(|message| DeviceError {
        device: name.into(),
        message,
    })?;
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(_) if !candle_core::utils::cuda_is_available() => Err(DeviceError {
            device: name.into(),
            message: format!(
                "this build has no CUDA (built without the `cuda` feature); use \
                     --device cpu, or rebuild with `{CUDA_BUILD}`"
            ),
        }),
        DeviceSpec::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| DeviceError {
            device: name.into(),
            message: e.to_string(),
        }),
    }
}

/// Checks that `device` can compute in `dtype`: bf16 needs CUDA (candle's CPU backend
/// has no bf16 matmul).
pub fn check_precision(device: &Device, dtype: candle_core::DType) -> Result<(), DeviceError> {
    if dtype == candle_core::DType::BF16 && !device.is_cuda() {
        return Err(DeviceError {
            device: if device.is_cpu() {
                "cpu".into()
            } else {
                format!("{:?}", device.location())
            },
            message: "precision \"bf16\" runs on CUDA only (candle's CPU backend has no bf16 \
                      matmul); use precision = \"f32\" on the CPU"
                .into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_device_name("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(parse_device_name("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(parse_device_name("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        assert!(parse_device_name("cuda:x").is_err());
        assert!(parse_device_name("metal").is_err());
    }

    #[test]
    fn bf16_is_refused_on_the_cpu() {
        let err = check_precision(&Device::Cpu, candle_core::DType::BF16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CUDA only"), "{err}");
        assert!(check_precision(&Device::Cpu, candle_core::DType::F32).is_ok());
    }
}
