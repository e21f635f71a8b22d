//! A natural logarithm that the compiler can vectorise, for the hot sum `Σ p ln p` of BALD's
//! expected entropy (N·C·K terms; `f64::ln` is a scalar libm call and made BALD 7x slower than
//! reading its input).
//!
//! Method: `x = 2^e · m` with `m` in `[√½, √2)`, then `ln m = ln(1 + f)` from `s = f / (2 + f)`
//! and a degree-14 minimax polynomial in `s` (coefficients of fdlibm's `e_log.c`, Sun
//! Microsystems 1993, whose error is below 1 ulp). Branch-free, so loops over it vectorise.

const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
const LG1: f64 = 6.666_666_666_666_735e-1;
const LG2: f64 = 3.999_999_999_940_942e-1;
const LG3: f64 = 2.857_142_874_366_239e-1;
const LG4: f64 = 2.222_219_843_214_978_4e-1;
const LG5: f64 = 1.818_357_216_161_805e-1;
const LG6: f64 = 1.531_383_769_920_937_3e-1;
const LG7: f64 = 1.479_819_860_511_658_6e-1;

/// `ln x` for normal positive `x` (every nonzero f32 is normal as an f64). Not for 0,
/// subnormal f64, infinities or NaN.
#[inline(always)]
fn ln_normal(x: f64) -> f64 {
    let bits = x.to_bits();
    // The biased exponent as an f64 without an int-to-float conversion (which AVX2 lacks for
    // 64-bit lanes): placed in the mantissa of 2^52, then 2^52 subtracted.
    let biased = f64::from_bits(0x4330_0000_0000_0000 | (bits >> 52)) - 4_503_599_627_370_496.0;
    // Mantissa in [1, 2); halve it (and bump the exponent) when above √2.
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let above = m > std::f64::consts::SQRT_2;
    let m = if above { m * 0.5 } else { m };
    let e = biased - 1023.0 + if above { 1.0 } else { 0.0 };
    let f = m - 1.0;
    let half_f2 = 0.5 * f * f;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let odd = w * (LG2 + w * (LG4 + w * LG6));
    let even = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    let r = even + odd;
    e * LN2_HI - ((half_f2 - (s * (half_f2 + r) + e * LN2_LO)) - f)
}

/// `x ln x` for `x` in `[0, 1]`, with `0 ln 0 = 0`, branch-free. Nats.
#[inline(always)]
pub fn x_ln_x(x: f64) -> f64 {
    // ln of a tiny stand-in for 0 is finite, and 0 · finite = 0: no branch needed.
    x * ln_normal(x.max(f64::MIN_POSITIVE))
}

/// `Σ p ln p` over `values` (probabilities, each in `[0, 1]`), with `0 ln 0 = 0`, accumulated
/// in f64 in independent lanes (so the loop vectorises; callers compile it for AVX2 too, see
/// `score::bald`). Nats.
#[inline(always)]
pub fn sum_x_ln_x(values: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0.0f64; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &p) in lanes.iter_mut().zip(chunk) {
            *lane += x_ln_x(f64::from(p));
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&p| x_ln_x(f64::from(p))).sum();
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_within_two_ulps_over_the_f32_range() {
        let mut rng = fastrand::Rng::with_seed(1);
        let specials = [1.0f32, 0.5, 0.25, f32::MIN_POSITIVE, 1e-45, 0.999_999_94, std::f32::consts::FRAC_1_SQRT_2];
        let randoms: Vec<f32> = (0..200_000).map(|_| rng.f32()).collect();
        let wide: Vec<f32> = (0..200_000).map(|_| f32::from_bits(rng.u32(1..0x3f80_0000))).collect();
        for p in specials.into_iter().chain(randoms).chain(wide).filter(|&p| p > 0.0) {
            let x = f64::from(p);
            let (fast, libm) = (ln_normal(x), x.ln());
            let ulps = (fast - libm).abs() / (libm.abs() * f64::EPSILON).max(f64::MIN_POSITIVE);
            assert!(ulps <= 2.0 || fast == libm, "ln({x}) = {fast}, libm {libm}");
        }
    }

    #[test]
    fn sum_treats_zero_as_contributing_nothing_and_matches_the_scalar_sum() {
        let values: Vec<f32> = (0..1003).map(|i| if i % 7 == 0 { 0.0 } else { (i % 100) as f32 / 100.0 }).collect();
        let expected: f64 = values.iter().map(|&p| f64::from(p)).map(|x| if x > 0.0 { x * x.ln() } else { 0.0 }).sum();
        let got = sum_x_ln_x(&values);
        assert!((got - expected).abs() <= 1e-12 * expected.abs(), "{got} vs {expected}");
        assert_eq!(sum_x_ln_x(&[0.0; 9]), 0.0);
        assert_eq!(sum_x_ln_x(&[]), 0.0);
    }
}
