//! Choosing the libtorch device: `"auto"` means CUDA when a GPU is visible, else CPU.

use tch::Device;

use crate::error::{RecforgeError, Result};

/// Parses a device name: `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"`. Asking for CUDA where none is
/// available, or for a GPU index that does not exist, is a config error.
pub fn resolve(name: &str) -> Result<Device> {
    let n_gpus = tch::Cuda::device_count();
    match name {
        "auto" => Ok(if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let index = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|i| i.parse::<usize>().ok())
                    .ok_or_else(|| bad_name(name))?,
                None => return Err(bad_name(name)),
            };
            if (index as i64) < n_gpus {
                Ok(Device::Cuda(index))
            } else {
                Err(RecforgeError::config(format!(
                    "device {name:?} asked for, but {n_gpus} CUDA device(s) are visible"
                )))
            }
        }
    }
}

fn bad_name(name: &str) -> RecforgeError {
    RecforgeError::config(format!(
        "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name:?}"
    ))
}

/// The name of a device as Python's torch writes it (`cpu`, `cuda`, `cuda:1`).
pub fn name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(0) => "cuda".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_names_fail() {
        assert_eq!(resolve("cpu").unwrap(), Device::Cpu);
        let auto = resolve("auto").unwrap();
        assert_eq!(auto == Device::Cpu, !tch::Cuda::is_available());
        assert!(matches!(resolve("gpu"), Err(RecforgeError::Config(_))));
        assert!(matches!(resolve("cuda:x"), Err(RecforgeError::Config(_))));
        assert!(resolve("cuda:999").is_err());
        // A tensor op on the resolved device works: libtorch is linked and loads.
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]).to_device(auto);
        assert_eq!(t.sum(tch::Kind::Float).double_value(&[]), 6.0);
        assert_eq!(name(Device::Cuda(2)), "cuda:2");
    }

    #[cfg(feature = "cuda-tests")]
    #[test]
    fn cuda_is_visible_on_a_gpu_machine() {
        assert!(
            tch::Cuda::is_available(),
            "cuda-tests built but no CUDA device found"
        );
        assert_eq!(resolve("auto").unwrap(), Device::Cuda(0));
    }
}
