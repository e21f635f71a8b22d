//! Calls the built-in heuristics through the plugin's exported descriptor, exactly as the host
//! does, so these tests cover the ABI glue as well as the math.

#![allow(dead_code, reason = "each test file uses a subset of these helpers")]

use std::ffi::CStr;

use alps_heuristic_abi::{ErrorBuffer, HeuristicDescriptor, PluginDescriptor, ProbabilitiesRaw, Status};

/// The descriptor of the built-in heuristic `name`.
pub fn heuristic(name: &str) -> &'static HeuristicDescriptor {
    // SAFETY: the entry symbol returns a pointer to the plugin's static descriptor.
    let plugin: &'static PluginDescriptor = unsafe { &*alps_heuristics_builtin::alps_heuristic_plugin() };
    // SAFETY: `heuristics` points to `heuristic_count` static descriptors.
    let all = unsafe { std::slice::from_raw_parts(plugin.heuristics, plugin.heuristic_count) };
    all.iter()
        // SAFETY: names are static NUL-terminated strings.
        .find(|h| unsafe { CStr::from_ptr(h.name) }.to_str() == Ok(name))
        .unwrap_or_else(|| panic!("no built-in heuristic {name}"))
}

fn raw(data: &[f32], shape: [usize; 3]) -> ProbabilitiesRaw {
    assert_eq!(data.len(), shape.iter().product::<usize>());
    ProbabilitiesRaw::probabilities(data.as_ptr(), shape[0], shape[1], shape[2])
}

/// Scores `data` of `shape` `[N, C, K]` with heuristic `name`; panics on a non-OK status.
pub fn score(name: &str, data: &[f32], shape: [usize; 3], seed: u64) -> Vec<f32> {
    let score = heuristic(name).score.unwrap_or_else(|| panic!("{name} is not a score heuristic"));
    let mut scores = vec![f32::NAN; shape[0]];
    let mut message = vec![0u8; 512];
    let mut error = ErrorBuffer { data: message.as_mut_ptr(), capacity: message.len(), len: 0 };
    // SAFETY: valid input of `shape`, N writable scores, a valid error buffer.
    let status = unsafe { score(&raw(data, shape), seed, scores.as_mut_ptr(), &mut error) };
    assert_eq!(status, Status::Ok as i32, "{name}: {}", String::from_utf8_lossy(&message[..error.len]));
    scores
}

/// Selects `query_size` items with batch heuristic `name`; returns (indices, scores).
pub fn select(name: &str, data: &[f32], shape: [usize; 3], query_size: usize, seed: u64) -> (Vec<u32>, Vec<f32>) {
    let select = heuristic(name).select.unwrap_or_else(|| panic!("{name} is not a batch heuristic"));
    let (mut indices, mut scores) = (vec![u32::MAX; query_size], vec![f32::NAN; query_size]);
    let mut message = vec![0u8; 512];
    let mut error = ErrorBuffer { data: message.as_mut_ptr(), capacity: message.len(), len: 0 };
    // SAFETY: valid input of `shape`, `query_size` writable values in each output.
    let status =
        unsafe { select(&raw(data, shape), query_size, seed, indices.as_mut_ptr(), scores.as_mut_ptr(), &mut error) };
    assert_eq!(status, Status::Ok as i32, "{name}: {}", String::from_utf8_lossy(&message[..error.len]));
    (indices, scores)
}

/// `[N, C, K]` data from per-sample `[C, K]` blocks.
pub fn stack(samples: &[Vec<f32>]) -> Vec<f32> {
    samples.concat()
}

/// One sample `[C, K]` whose K iterations are the given class distributions (each length C).
pub fn sample_from_iterations(iterations: &[&[f32]]) -> Vec<f32> {
    let (c, k) = (iterations[0].len(), iterations.len());
    (0..c).flat_map(|class| (0..k).map(move |t| iterations[t][class])).collect()
}

/// Calls batch heuristic `name` on a prepared `input` (e.g. with embeddings): `Ok((indices,
/// scores))`, or `Err((status, message))` for a non-OK status.
pub fn select_input(
    name: &str,
    input: &ProbabilitiesRaw,
    query_size: usize,
    seed: u64,
) -> Result<(Vec<u32>, Vec<f32>), (i32, String)> {
    let select = heuristic(name).select.unwrap_or_else(|| panic!("{name} is not a batch heuristic"));
    let (mut indices, mut scores) = (vec![u32::MAX; query_size], vec![f32::NAN; query_size]);
    let mut message = vec![0u8; 512];
    let mut error = ErrorBuffer { data: message.as_mut_ptr(), capacity: message.len(), len: 0 };
    // SAFETY: the caller's input is valid for its shapes; `query_size` writable values in each
    // output; a valid error buffer.
    let status = unsafe { select(input, query_size, seed, indices.as_mut_ptr(), scores.as_mut_ptr(), &mut error) };
    if status == Status::Ok as i32 {
        Ok((indices, scores))
    } else {
        Err((status, String::from_utf8_lossy(&message[..error.len]).into_owned()))
    }
}
