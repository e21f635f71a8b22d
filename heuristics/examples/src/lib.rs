//! Example ALPS heuristic plugin: `ratio`, ratio-of-confidence sampling (Munro 2021,
//! "Human-in-the-Loop Machine Learning", ch. 3): `pbar(2) / pbar(1)`, the mean probability of
//! the second most likely class over that of the most likely one, in `[0, 1]`; higher = more
//! informative. Build with `cargo build --release` in this folder and drop
//! `target/release/libalps_example_plugin.so` into the server's plugin directory.

use std::ffi::CStr;

use alps_heuristic_abi::{Direction, Heuristic, HeuristicError, Probabilities, ScoreHeuristic};

/// See the crate documentation.
pub struct Ratio;

impl Heuristic for Ratio {
    const NAME: &'static CStr = c"ratio";
    const VERSION: &'static CStr = if cfg!(feature = "v2") { c"2.0.0" } else { c"1.0.0" };
    const DESCRIPTION: &'static CStr = c"Ratio of confidence: pbar(2) / pbar(1) (Munro 2021)";
    const DIRECTION: Direction = Direction::HigherIsMoreInformative;
}

impl ScoreHeuristic for Ratio {
    fn score(input: Probabilities<'_>, _seed: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
        if cfg!(feature = "fault-panic") {
            panic!("example plugin built with fault-panic");
        }
        if cfg!(feature = "fault-error") {
            return Err(HeuristicError::Internal("example plugin built with fault-error".into()));
        }
        let (c, k) = (input.c(), input.k());
        for (i, score) in scores.iter_mut().enumerate() {
            let sample = input.sample(i);
            let (mut first, mut second) = (0.0f32, 0.0f32);
            for class in 0..c {
                let mean = sample[class * k..(class + 1) * k].iter().sum::<f32>() / k as f32;
                if mean > first {
                    (first, second) = (mean, first);
                } else if mean > second {
                    second = mean;
                }
            }
            *score = if first > 0.0 { second / first } else { 0.0 };
            if cfg!(feature = "v2") {
                *score += 1.0;
            }
            if cfg!(feature = "fault-nan") {
                *score = f32::NAN;
            }
        }
        Ok(())
    }
}

#[cfg(not(any(feature = "fault-no-entry", feature = "fault-abi-major")))]
alps_heuristic_abi::export_plugin! {
    name: c"example",
    version: c"0.1.0",
    heuristics: [alps_heuristic_abi::HeuristicDescriptor::for_score::<Ratio>()],
}

/// A descriptor claiming the next ABI major, which the host must refuse.
#[cfg(feature = "fault-abi-major")]
mod future_abi {
    use alps_heuristic_abi::{ABI_MAJOR, ABI_MINOR, HeuristicDescriptor, PluginDescriptor};

    static HEURISTICS: [HeuristicDescriptor; 1] = [HeuristicDescriptor::for_score::<super::Ratio>()];
    static PLUGIN: PluginDescriptor = PluginDescriptor {
        abi_major: ABI_MAJOR + 1,
        abi_minor: ABI_MINOR,
        name: c"example-future".as_ptr(),
        version: c"0.1.0".as_ptr(),
        heuristics: HEURISTICS.as_ptr(),
        heuristic_count: 1,
        heuristic_inputs: std::ptr::null(),
    };

    /// Entry symbol with the wrong ABI major.
    #[unsafe(no_mangle)]
    pub extern "C" fn alps_heuristic_plugin() -> *const PluginDescriptor {
        &PLUGIN
    }
}
