//! Random draws owned by one job: a seeded Predict, a Rank chunk, a training run.
//!
//! libtorch has one generator per process (`tch::manual_seed`). A job that seeded it and then
//! drew from it saw every other thread's draws in between, so a seeded Predict was not
//! reproducible while a training job ran, and two seeded training jobs perturbed each other.
//! Here each job draws from its own [`Generator`], installed for the job's thread with
//! [`with_generator`]:
//!
//! * dropout masks are a counter-based hash of (job seed, draw number, element index), computed
//!   with integer tensor ops on the tensor's own device: no host-to-device copy, no shared state,
//!   and the same mask on CPU and CUDA (the idea of counter-based generators is Salmon et al.,
//!   "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the mixing function is Chris
//!   Wellons' `lowbias32` from his hash-prospector search, 2018);
//! * shuffles come from a host generator seeded by the job's next draw.
//!
//! libtorch's generator remains only where ALPS cannot route around it: the random
//! initialisation of new parameters by `tch::nn` and dropout inside TorchScript models. Both
//! hold [`libtorch_generator`]'s lock from the seeding to the last draw that must follow it.

use std::{
    cell::RefCell,
    sync::{Mutex, MutexGuard},
};

use tch::{Kind, Tensor};

/// The random state of one job: a seed and the number of draws made so far. Draw `n` of a
/// generator seeded with `s` is the same on every thread, device and run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generator {
    seed: u64,
    draws: u64,
}

impl Generator {
    /// A generator whose draws are fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, draws: 0 }
    }

    /// A generator seeded from the host's entropy, for jobs that asked for no seed.
    pub fn unseeded() -> Self {
        Self::new(fastrand::u64(..))
    }

    /// The next draw's 64-bit key: SplitMix64 of the seed advanced by the draw number, so
    /// consecutive draws are independent.
    fn next_key(&mut self) -> u64 {
        self.draws += 1;
        splitmix64(self.seed.wrapping_add(self.draws.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates from a host generator seeded with
    /// the next draw).
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut order: Vec<i64> = (0..n as i64).collect();
        fastrand::Rng::with_seed(self.next_key()).shuffle(&mut order);
        order
    }

    /// A fresh seed for libtorch's own generator, for draws only libtorch can make
    /// (TorchScript models); hold [`libtorch_generator`] while using it.
    pub fn libtorch_seed(&mut self) -> i64 {
        // Reinterpreting the u64 keeps every key distinct.
        self.next_key() as i64
    }

    /// Inverted dropout: each element of `x` is kept with probability `1 - p` and scaled by
    /// `1 / (1 - p)`, else zeroed, as `torch.nn.functional.dropout` in training mode
    /// (Srivastava et al., JMLR 2014). Same shape, kind and device as `x`.
    ///
    /// # Errors
    /// [`tch::TchError`] if `p` is not in `[0, 1)` or libtorch fails (out of memory).
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor, tch::TchError> {
        let key = self.next_key();
        if !(0.0..1.0).contains(&p) {
            return Err(tch::TchError::Kind(format!("dropout probability {p} is not in [0, 1)")));
        }
        let n = x.numel() as i64;
        if p == 0.0 {
            return Ok(x.shallow_clone());
        }
        // Keep where the 32-bit value is at least p·2^32: probability 1 - p, to within 2^-32.
        let threshold = (p * 4_294_967_296.0).ceil() as i64;
        let mask = Tensor::f_empty([n], (x.kind(), x.device()))?;
        // On the CPU, chunks keep the int64 temporaries in cache (one pass over 5 million
        // elements was 5x slower than in chunks); on CUDA they bound the temporaries' memory.
        // Element i's value does not depend on them. Chunk sizes divide 2^32, so a chunk never
        // straddles two blocks of 2^32 elements (see `uniform_bits`).
        let chunk = if x.device().is_cuda() { CUDA_CHUNK } else { CPU_CHUNK };
        for start in (0..n).step_by(chunk as usize) {
            let len = chunk.min(n - start);
            let keep = uniform_bits(start, len, key, x.device())?.f_ge(threshold)?;
            mask.f_narrow(0, start, len)?.f_copy_(&keep)?;
        }
        x.f_mul(&mask.f_view(x.size().as_slice())?)?.f_mul_scalar(1.0 / (1.0 - p))
    }
}

/// SplitMix64's output function (Steele, Lea & Flood, OOPSLA 2014).
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Elements hashed at once on the CPU: 4 MiB of int64, within a core's share of cache.
const CPU_CHUNK: i64 = 1 << 19;
/// Elements hashed at once on CUDA: 2 GiB of int64 temporaries at most.
const CUDA_CHUNK: i64 = 1 << 28;

/// Values of elements `start..start + len` (within one block of 2^32 elements), independent
/// and uniform on `[0, 2^32)` as int64, for the draw with `key`: element `i` is
/// `h(h(i mod 2^32 xor k0) xor k1)` with `h` = lowbias32 and `k0`, `k1` the halves of the key,
/// which for blocks after the first is mixed with the block number.
fn uniform_bits(start: i64, len: i64, key: u64, device: tch::Device) -> Result<Tensor, tch::TchError> {
    let block = (start >> 32) as u64;
    let key = if block == 0 { key } else { splitmix64(key ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15)) };
    let start = start & 0xffff_ffff;
    let mut bits = Tensor::f_arange_start(start, start + len, (Kind::Int64, device))?;
    let _ = bits.f_bitwise_xor_((key & 0xffff_ffff) as i64)?;
    lowbias32(&mut bits)?;
    let _ = bits.f_bitwise_xor_((key >> 32) as i64)?;
    lowbias32(&mut bits)?;
    Ok(bits)
}

/// lowbias32 on int64 tensors holding 32-bit values, in place: x ^= x >> 16; x *= 0x7feb352d;
/// x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16 (all mod 2^32).
fn lowbias32(x: &mut Tensor) -> Result<(), tch::TchError> {
    xor_shift_right(x, 16)?;
    mul_mod_2_32(x, 0x7feb_352d)?;
    xor_shift_right(x, 15)?;
    mul_mod_2_32(x, 0x846c_a68b)?;
    xor_shift_right(x, 16)
}

fn xor_shift_right(x: &mut Tensor, bits: i64) -> Result<(), tch::TchError> {
    let shifted = x.f_bitwise_right_shift_tensor_scalar(bits)?;
    let _ = x.f_bitwise_xor_tensor_(&shifted)?;
    Ok(())
}

/// `x * c mod 2^32` for `x, c < 2^32` without int64 overflow (which libtorch leaves undefined):
/// with `c = hi·2^16 + lo`, `x·c ≡ x·lo + ((x·hi) mod 2^16)·2^16`, and every product stays
/// below 2^48.
fn mul_mod_2_32(x: &mut Tensor, c: i64) -> Result<(), tch::TchError> {
    let high = x.f_mul_scalar(c >> 16)?.f_bitwise_and(0xffff)?.f_bitwise_left_shift_tensor_scalar(16)?;
    let _ = x.f_mul_scalar_(c & 0xffff)?;
    let _ = x.f_add_(&high)?;
    let _ = x.f_bitwise_and_(0xffff_ffff)?;
    Ok(())
}

thread_local! {
    static CURRENT: RefCell<Option<Generator>> = const { RefCell::new(None) };
}

/// Runs `job` with `generator` as this thread's generator: dropout in built-in heads and
/// [`with_current`] draw from it. The previous generator (if any) is restored afterwards, also
/// when `job` panics.
pub fn with_generator<R>(generator: Generator, job: impl FnOnce() -> R) -> R {
    struct Restore(Option<Generator>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|current| *current.borrow_mut() = previous);
        }
    }
    let _restore = Restore(CURRENT.with(|current| current.borrow_mut().replace(generator)));
    job()
}

/// Calls `draw` with this thread's generator; without one (code outside any job, such as a
/// benchmark), with a fresh unseeded generator.
pub fn with_current<R>(draw: impl FnOnce(&mut Generator) -> R) -> R {
    CURRENT.with(|current| match current.borrow_mut().as_mut() {
        Some(generator) => draw(generator),
        None => draw(&mut Generator::unseeded()),
    })
}

static LIBTORCH_GENERATOR: Mutex<()> = Mutex::new(());

/// Exclusive use of libtorch's process-wide generator, from a `tch::manual_seed` to the last
/// draw that must follow it. Every use of that generator in ALPS holds this lock.
pub fn libtorch_generator() -> MutexGuard<'static, ()> {
    LIBTORCH_GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.f_flatten(0, -1).unwrap()).unwrap()
    }

    #[test]
    fn the_same_seed_draws_the_same_masks_and_other_seeds_or_draws_differ() {
        let x = Tensor::ones([64, 100], (Kind::Float, tch::Device::Cpu));
        let mut a = Generator::new(7);
        let mut b = Generator::new(7);
        let (a1, b1) = (values(&a.dropout(&x, 0.5).unwrap()), values(&b.dropout(&x, 0.5).unwrap()));
        assert_eq!(a1, b1);
        let a2 = values(&a.dropout(&x, 0.5).unwrap());
        assert_ne!(a1, a2, "the second draw must not repeat the first");
        let c1 = values(&Generator::new(8).dropout(&x, 0.5).unwrap());
        assert_ne!(a1, c1);
    }

    #[test]
    fn masks_keep_one_minus_p_of_the_elements_and_scale_them() {
        let n = 200_000;
        let x = Tensor::ones([n], (Kind::Float, tch::Device::Cpu));
        for p in [0.1, 0.5, 0.9] {
            let out = values(&Generator::new(3).dropout(&x, p).unwrap());
            let kept = out.iter().filter(|&&v| v != 0.0).count() as f64;
            // Binomial(n, 1 - p): 5 standard deviations.
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((kept - n as f64 * (1.0 - p)).abs() < 5.0 * sd, "p = {p}: kept {kept} of {n}");
            let scale = (1.0 / (1.0 - p)) as f32;
            assert!(
                out.iter().all(|&v| v == 0.0 || (v - scale).abs() < 1e-6),
                "p = {p}: values other than 0 and 1/(1-p)"
            );
        }
        assert_eq!(values(&Generator::new(3).dropout(&x, 0.0).unwrap()), values(&x));
    }

    #[test]
    fn neighbouring_elements_and_rows_are_independent() {
        // A mask with structure (a period, a correlated neighbour) would break MC-Dropout's
        // independence between passes; pairs of neighbours must be kept together ≈ (1-p)^2.
        let (rows, cols) = (400usize, 512usize);
        let x = Tensor::ones([rows as i64, cols as i64], (Kind::Float, tch::Device::Cpu));
        let mask = values(&Generator::new(11).dropout(&x, 0.5).unwrap());
        let kept = |i: usize| mask[i] != 0.0;
        let n = rows * cols;
        let next = (0..n - 1).filter(|&i| kept(i) && kept(i + 1)).count() as f64 / (n - 1) as f64;
        let below = (0..n - cols).filter(|&i| kept(i) && kept(i + cols)).count() as f64 / (n - cols) as f64;
        for (what, rate) in [("next element", next), ("next row", below)] {
            assert!((rate - 0.25).abs() < 0.01, "{what}: both kept in {rate:.4} of pairs, expected 0.25");
        }
    }

    #[test]
    fn the_hash_is_lowbias32() {
        // Reference values computed with u32 arithmetic, so the int64 tensor version must agree.
        fn reference(mut x: u32) -> u32 {
            x ^= x >> 16;
            x = x.wrapping_mul(0x7feb_352d);
            x ^= x >> 15;
            x = x.wrapping_mul(0x846c_a68b);
            x ^ (x >> 16)
        }
        let inputs: Vec<i64> = vec![0, 1, 2, 0xffff, 0x1_0000, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 123_456_789];
        let mut t = Tensor::from_slice(&inputs);
        lowbias32(&mut t).unwrap();
        let got = Vec::<i64>::try_from(t).unwrap();
        let expected: Vec<i64> = inputs.iter().map(|&x| i64::from(reference(x as u32))).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn the_installed_generator_serves_the_thread_and_is_restored() {
        let first = with_generator(Generator::new(5), || with_current(|g| g.permutation(10)));
        let again = with_generator(Generator::new(5), || with_current(|g| g.permutation(10)));
        assert_eq!(first, again);
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        // Nested jobs restore the outer generator, whose draw count is unaffected by the inner.
        let (outer, inner) = with_generator(Generator::new(5), || {
            let inner = with_generator(Generator::new(6), || with_current(|g| g.permutation(10)));
            (with_current(|g| g.permutation(10)), inner)
        });
        assert_eq!(outer, first);
        assert_ne!(inner, first);
        assert!(std::panic::catch_unwind(|| with_generator(Generator::new(1), || panic!("job failed"))).is_err());
        CURRENT.with(|current| assert!(current.borrow().is_none(), "a panicking job left its generator installed"));
    }

    #[test]
    fn chunks_do_not_change_the_mask() {
        // The CPU hashes in chunks; the mask must be the one the whole range gives at once (as
        // on CUDA), including across chunk boundaries.
        let n = 2 * CPU_CHUNK + 5;
        let x = Tensor::ones([n], (Kind::Float, tch::Device::Cpu));
        let kept: Vec<bool> = values(&Generator::new(4).dropout(&x, 0.3).unwrap()).iter().map(|&v| v != 0.0).collect();
        let key = Generator::new(4).next_key();
        let threshold = (0.3f64 * 4_294_967_296.0).ceil() as i64;
        let whole = uniform_bits(0, n, key, tch::Device::Cpu).unwrap().f_ge(threshold).unwrap();
        assert_eq!(kept, Vec::<bool>::try_from(whole).unwrap());
    }

    #[test]
    fn elements_past_2_32_draw_from_their_own_block_key() {
        // Tensors of more than 2^32 elements (2,048 samples x K = 1,000 x D = 4,096 is 8.4e9)
        // hash index i mod 2^32 under a key mixed with the block number: no repeat of block 0,
        // and the values do not depend on where a chunk starts.
        let values = |start: i64, len: i64| {
            Vec::<i64>::try_from(uniform_bits(start, len, 99, tch::Device::Cpu).unwrap()).unwrap()
        };
        let first = values(0, 10);
        let second = values(1 << 32, 10);
        assert_ne!(first, second);
        assert_eq!(values((1 << 32) + 5, 5), second[5..]);
        assert_eq!(values(0, 10), first);
    }

    #[test]
    fn a_bad_probability_is_an_error() {
        let x = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
        assert!(Generator::new(1).dropout(&x, 1.0).is_err());
        assert!(Generator::new(1).dropout(&x, -0.1).is_err());
    }
}
