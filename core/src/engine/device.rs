//! Which device runs the models (CUDA when present, CPU otherwise) and a libtorch self-check.

use std::{fmt, sync::Mutex, thread};

use tch::{Device, Kind, Tensor};

/// libtorch version this binary was built against and links at run time (its rpath points at
/// that libtorch), e.g. `2.11.0+cu130`; read from the PyTorch package by `core/build.rs`.
pub const LIBTORCH_VERSION: &str = env!("ALPS_LIBTORCH_VERSION");

/// The device models run on: the first CUDA device when libtorch sees one, else the CPU.
pub fn preferred_device() -> Device {
    Device::cuda_if_available()
}

/// Held while a thread sets its intra-op count, during which the count that threads start
/// with is briefly that thread's.
static SETTING_THREADS: Mutex<()> = Mutex::new(());

/// The calling thread's intra-op CPU threads. A thread that has not run libtorch yet gets the
/// process's count (one per physical core unless `OMP_NUM_THREADS` says otherwise), which
/// inference runs on; call this first thing on a long-lived thread to fix it.
pub fn intra_op_threads() -> usize {
    let _setting = SETTING_THREADS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1)
}

/// Sets the intra-op CPU thread count of the calling thread alone to `threads` (at least 1)
/// and returns the count it had.
///
/// libtorch keeps the count per thread (OpenMP's `nthreads-var` and MKL's local setting), but
/// `at::set_num_threads` also stores it as the count that threads which have not run an
/// operator yet will start with. Short-lived threads read that count before and store it back
/// after, so every other thread keeps the process's count: those that take the lock first
/// (the inference worker, the server's runtime threads) and those that started before. If no
/// thread can be started, the count is left as it was (logged). This relies on libtorch's
/// OpenMP build (PyPI's Linux wheels); a unit test checks it.
pub fn set_intra_op_threads_of_this_thread(threads: usize) -> usize {
    let _setting = SETTING_THREADS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // The first libtorch call on a thread gives it the process's count.
    let before = tch::get_num_threads();
    let unchanged = usize::try_from(before).unwrap_or(1);
    let Some(process) = on_a_new_thread(tch::get_num_threads) else {
        tracing::warn!("cannot start a thread to set a training job's CPU threads; it uses the process's");
        return unchanged;
    };
    tch::set_num_threads(i32::try_from(threads.max(1)).unwrap_or(i32::MAX));
    if on_a_new_thread(move || tch::set_num_threads(process)).is_none() {
        tracing::warn!(threads, "cannot restore the process's CPU threads; new threads start with a job's");
    }
    unchanged
}

/// Runs `call` on a thread of its own and returns its result; `None` if no thread could be
/// started or the call panicked.
fn on_a_new_thread<T: Send>(call: impl FnOnce() -> T + Send) -> Option<T> {
    thread::scope(|scope| thread::Builder::new().spawn_scoped(scope, call).ok()?.join().ok())
}

/// What libtorch sees on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceReport {
    /// See [`LIBTORCH_VERSION`].
    pub libtorch_version: &'static str,
    /// Whether `libtorch_cuda` is linked and a CUDA driver and device are usable.
    pub cuda_available: bool,
    /// Number of CUDA devices (0 without CUDA).
    pub cuda_devices: i64,
    /// cuDNN version as an integer (e.g. 91900 for 9.19.0), when CUDA is available.
    pub cudnn_version: Option<i64>,
    /// Intra-op CPU threads libtorch uses.
    pub cpu_threads: i32,
    /// Device that models will run on.
    pub device: Device,
}

impl DeviceReport {
    /// Queries libtorch.
    pub fn probe() -> Self {
        let cuda_available = tch::Cuda::is_available();
        Self {
            libtorch_version: LIBTORCH_VERSION,
            cuda_available,
            cuda_devices: if cuda_available { tch::Cuda::device_count() } else { 0 },
            cudnn_version: (cuda_available && tch::Cuda::cudnn_is_available()).then(tch::utils::version_cudnn),
            cpu_threads: i32::try_from(intra_op_threads()).unwrap_or(i32::MAX),
            device: preferred_device(),
        }
    }
}

impl fmt::Display for DeviceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "libtorch: {}", self.libtorch_version)?;
        writeln!(f, "cpu: {} intra-op threads", self.cpu_threads)?;
        write!(f, "cuda: ")?;
        if self.cuda_available {
            write!(f, "available, {} device(s)", self.cuda_devices)?;
            if let Some(cudnn) = self.cudnn_version {
                write!(f, ", cuDNN {cudnn}")?;
            }
            writeln!(f)?;
        } else {
            writeln!(f, "not available")?;
        }
        write!(f, "models run on: {:?}", self.device)
    }
}

/// Result of [`forward_check`]: a fixed linear layer applied to a fixed input.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardCheck {
    /// Device the pass ran on.
    pub device: Device,
    /// Softmax of `x · W` for `x = [1, 2, 3]` and `W[i][j] = (i + j) / 10` (a `[1, 3] x [3, 2]`
    /// product), shape `[2]`.
    pub probabilities: Vec<f32>,
}

/// Runs a tiny forward pass (matmul + softmax) on `device` and returns its output, proving that
/// kernels load and execute there.
///
/// # Errors
/// The libtorch error if the device cannot run it (e.g. CUDA driver mismatch).
pub fn forward_check(device: Device) -> Result<ForwardCheck, tch::TchError> {
    let _no_grad = tch::no_grad_guard();
    let x = Tensor::f_from_slice(&[1.0f32, 2.0, 3.0])?.f_view([1, 3])?.f_to_device(device)?;
    let w: Vec<f32> = (0..3).flat_map(|i| (0..2).map(move |j| (i + j) as f32 / 10.0)).collect();
    let w = Tensor::f_from_slice(&w)?.f_view([3, 2])?.f_to_device(device)?;
    let probabilities = x.f_matmul(&w)?.f_softmax(-1, Kind::Float)?.f_to_device(Device::Cpu)?.f_view([-1])?;
    Ok(ForwardCheck { device, probabilities: Vec::<f32>::try_from(&probabilities)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_check_matches_the_hand_computed_softmax() {
        // x · W = [1*0 + 2*0.1 + 3*0.2, 1*0.1 + 2*0.2 + 3*0.3] = [0.8, 1.4].
        let logits = [0.8f32, 1.4];
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        let check = forward_check(Device::Cpu).unwrap();
        assert_eq!(check.probabilities.len(), 2);
        for (got, logit) in check.probabilities.iter().zip(logits) {
            assert!((got - logit.exp() / z).abs() < 1e-6, "{:?}", check.probabilities);
        }
    }

    #[test]
    fn report_is_consistent_with_cuda_availability() {
        let report = DeviceReport::probe();
        assert_eq!(report.libtorch_version, LIBTORCH_VERSION);
        assert!(report.cpu_threads >= 1);
        assert_eq!(report.cuda_available, report.cuda_devices > 0);
        assert_eq!(report.device.is_cuda(), report.cuda_available);
        assert!(report.to_string().contains(LIBTORCH_VERSION));
    }

    #[test]
    fn the_build_recorded_the_pinned_libtorch() {
        assert!(LIBTORCH_VERSION.starts_with("2.11.0"), "{LIBTORCH_VERSION}");
    }
}
