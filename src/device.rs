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

/// Whether the environment already tunes glibc's allocator (then it is left alone).
fn malloc_tuned_by_env() -> bool {
    std::env::vars_os().any(|(k, v)| {
        let k = k.to_string_lossy();
        k.starts_with("MALLOC_")
            || (k == "GLIBC_TUNABLES" && v.to_string_lossy().contains("malloc"))
    })
}

/// Keeps freed CPU memory in the process for reuse instead of returning it to the kernel.
///
/// glibc serves large blocks (above a threshold that starts at 128 KiB) with their own `mmap`
/// and unmaps them when freed, and trims the heap's free top; libtorch allocates each step's
/// activations anew, so every step of an inference loop page-faults its tensors in again (a
/// kernel zeroing of each 4 KiB page). Measured on SmolLM2-135M generation, 2 cores: about 15%
/// of the time, the `silu` of a prefill taking 8x its arithmetic. Raising the mmap threshold to
/// 32 MiB (glibc's maximum) and the trim threshold to 1 GiB lets freed blocks be reused, which
/// is what PyTorch's CPU performance guide gets from jemalloc or tcmalloc. The cost: up to 1 GiB
/// of freed memory stays with the process. Process-wide and done once; skipped where `MALLOC_*`
/// or a `glibc.malloc` tunable is set (the user's choice wins) and outside Linux/glibc.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if malloc_tuned_by_env() {
                return;
            }
            extern "C" {
                fn mallopt(
                    param: std::os::raw::c_int,
                    value: std::os::raw::c_int,
                ) -> std::os::raw::c_int;
            }
            const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
            const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
            // SAFETY: mallopt only sets two numeric parameters of glibc's allocator, which it
            // reads under its own lock; no memory is touched.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
            }
        });
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
