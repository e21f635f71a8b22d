//! Validated host-side input of heuristics: probabilities `[N, C, K]` as the ABI promises them to
//! plugins (`C >= 2`, finite, in `[0, 1]`, columns summing to 1).

use alps_heuristic_abi::ProbabilitiesRaw;

/// Largest accepted `|Σ_c P[n, c, k] - 1|`: loose enough for f32 softmax outputs summed in f32,
/// tight enough to catch logits passed as probabilities.
const SUM_TOLERANCE: f32 = 1e-3;

/// Why an input tensor is not acceptable. Messages name the offending sample, class and
/// iteration so a caller can find it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputError {
    /// The shape is not `[N, C, K]` with every dimension at least 1, or does not match the data.
    #[error("shape {shape:?} with {len} values: expected [N, C, K] with N, C, K >= 1 and N*C*K values")]
    Shape {
        /// The shape given.
        shape: Vec<u64>,
        /// Number of values given.
        len: usize,
    },
    /// More samples than selection indices (`u32`) can address.
    #[error("{n} samples exceed the limit of {max} per call")]
    TooManySamples {
        /// Samples given.
        n: u64,
        /// The limit.
        max: u64,
    },
    /// A NaN or infinite value.
    #[error("sample {sample}, class {class}, iteration {iteration}: value {value} is not finite")]
    NonFinite {
        /// Sample index n.
        sample: usize,
        /// Class index c.
        class: usize,
        /// MC iteration index k.
        iteration: usize,
        /// The value.
        value: f32,
    },
    /// A probability outside `[0, 1]`.
    #[error(
        "sample {sample}, class {class}, iteration {iteration}: probability {value} is outside [0, 1] (pass logits=true for logits)"
    )]
    OutOfRange {
        /// Sample index n.
        sample: usize,
        /// Class index c.
        class: usize,
        /// MC iteration index k.
        iteration: usize,
        /// The value.
        value: f32,
    },
    /// A `[n, :, k]` column that does not sum to 1.
    #[error(
        "sample {sample}, iteration {iteration}: probabilities sum to {sum} over classes, not 1 (pass logits=true for logits)"
    )]
    NotNormalised {
        /// Sample index n.
        sample: usize,
        /// MC iteration index k.
        iteration: usize,
        /// The sum over classes.
        sum: f32,
    },
}

/// Probabilities `[N, C, K]` (row-major, K fastest) that satisfy the plugin ABI's guarantees.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbabilityTensor {
    data: Vec<f32>,
    n: usize,
    c: usize,
    k: usize,
}

impl ProbabilityTensor {
    /// Validates probabilities of `shape` `[N, C, K]`. A one-output model (`C = 1`, a binary
    /// classifier's sigmoid probabilities `p`) becomes two classes `{p, 1 - p}`.
    ///
    /// # Errors
    /// [`InputError`] naming the first offending value.
    pub fn from_probabilities(data: Vec<f32>, shape: &[u64]) -> Result<Self, InputError> {
        let [n, c, k] = dims(shape, data.len())?;
        check_finite(&data, c, k)?;
        if let Some(i) = data.iter().position(|p| !(0.0..=1.0).contains(p)) {
            let (sample, class, iteration) = position(i, c, k);
            return Err(InputError::OutOfRange { sample, class, iteration, value: data[i] });
        }
        if c == 1 {
            return Ok(Self::binary(&data, n, k));
        }
        for sample in 0..n {
            for iteration in 0..k {
                let sum: f32 = (0..c).map(|class| data[(sample * c + class) * k + iteration]).sum();
                if (sum - 1.0).abs() > SUM_TOLERANCE {
                    return Err(InputError::NotNormalised { sample, iteration, sum });
                }
            }
        }
        Ok(Self { data, n, c, k })
    }

    /// Converts logits of `shape` `[N, C, K]` to probabilities: softmax over C for every
    /// `(n, k)`, or the sigmoid for a one-output model (`C = 1`, then expanded to two classes).
    ///
    /// # Errors
    /// [`InputError`] for a bad shape or a non-finite logit.
    pub fn from_logits(mut data: Vec<f32>, shape: &[u64]) -> Result<Self, InputError> {
        let [n, c, k] = dims(shape, data.len())?;
        check_finite(&data, c, k)?;
        if c == 1 {
            data.iter_mut().for_each(|z| *z = 1.0 / (1.0 + (-*z).exp()));
            return Ok(Self::binary(&data, n, k));
        }
        for sample in data.chunks_exact_mut(c * k) {
            for iteration in 0..k {
                let column = || (0..c).map(move |class| class * k + iteration);
                let max = column().map(|i| sample[i]).fold(f32::NEG_INFINITY, f32::max);
                let total: f32 = column().map(|i| (sample[i] - max).exp()).sum();
                column().for_each(|i| sample[i] = (sample[i] - max).exp() / total);
            }
        }
        Ok(Self { data, n, c, k })
    }

    /// `{p, 1 - p}` for every one-output probability `p`: `[N, 1, K]` to `[N, 2, K]`.
    fn binary(data: &[f32], n: usize, k: usize) -> Self {
        let data = data.chunks_exact(k).flat_map(|p| p.iter().copied().chain(p.iter().map(|p| 1.0 - p))).collect();
        Self { data, n, c: 2, k }
    }

    /// Samples N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Classes C (at least 2).
    pub fn c(&self) -> usize {
        self.c
    }

    /// MC iterations K.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Values, row-major `[N, C, K]`.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The ABI view; valid while `self` is borrowed.
    pub(super) fn raw(&self) -> ProbabilitiesRaw {
        ProbabilitiesRaw::probabilities(self.data.as_ptr(), self.n, self.c, self.k)
    }
}

fn dims(shape: &[u64], len: usize) -> Result<[usize; 3], InputError> {
    let bad = || InputError::Shape { shape: shape.to_vec(), len };
    let [n, c, k] = <[u64; 3]>::try_from(shape).map_err(|_| bad())?;
    if n > u64::from(u32::MAX) {
        return Err(InputError::TooManySamples { n, max: u64::from(u32::MAX) });
    }
    let as_usize = |d: u64| usize::try_from(d).ok().filter(|&d| d >= 1);
    let (n, c, k) = (as_usize(n).ok_or_else(bad)?, as_usize(c).ok_or_else(bad)?, as_usize(k).ok_or_else(bad)?);
    if n.checked_mul(c).and_then(|nc| nc.checked_mul(k)) != Some(len) {
        return Err(bad());
    }
    Ok([n, c, k])
}

fn check_finite(data: &[f32], c: usize, k: usize) -> Result<(), InputError> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => {
            let (sample, class, iteration) = position(i, c, k);
            Err(InputError::NonFinite { sample, class, iteration, value: data[i] })
        }
        None => Ok(()),
    }
}

/// `(n, c, k)` of flat index `i` in `[N, C, K]`.
fn position(i: usize, c: usize, k: usize) -> (usize, usize, usize) {
    (i / (c * k), (i / k) % c, i % k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_probabilities_pass_unchanged() {
        let data = vec![0.2, 0.6, 0.8, 0.4];
        let tensor = ProbabilityTensor::from_probabilities(data.clone(), &[1, 2, 2]).unwrap();
        assert_eq!((tensor.n(), tensor.c(), tensor.k()), (1, 2, 2));
        assert_eq!(tensor.data(), data);
    }

    #[test]
    fn one_output_models_become_two_classes() {
        // [N=2, C=1, K=2]: p = 0.9, 0.7 and 0.2, 0.4.
        let tensor = ProbabilityTensor::from_probabilities(vec![0.9, 0.7, 0.2, 0.4], &[2, 1, 2]).unwrap();
        assert_eq!(tensor.c(), 2);
        let expected = [0.9, 0.7, 1.0 - 0.9, 1.0 - 0.7, 0.2, 0.4, 1.0 - 0.2, 1.0 - 0.4];
        assert_eq!(tensor.data(), expected);
    }

    #[test]
    fn logits_are_softmaxed_over_classes_per_iteration() {
        // [1, 2, 2]: iteration 0 logits (0, 0) -> (0.5, 0.5); iteration 1 (ln 3, 0) -> (0.75, 0.25).
        let tensor = ProbabilityTensor::from_logits(vec![0.0, 3f32.ln(), 0.0, 0.0], &[1, 2, 2]).unwrap();
        let expected = [0.5, 0.75, 0.5, 0.25];
        for (got, want) in tensor.data().iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{:?}", tensor.data());
        }
    }

    #[test]
    fn one_output_logits_use_the_sigmoid() {
        let tensor = ProbabilityTensor::from_logits(vec![0.0], &[1, 1, 1]).unwrap();
        assert_eq!(tensor.data(), [0.5, 0.5]);
    }

    #[test]
    fn bad_inputs_name_the_offending_position() {
        let shape = &[2, 2, 2];
        let mut data = vec![0.5; 8];
        data[6] = f32::NAN; // sample 1, class 1, iteration 0
        assert!(matches!(
            ProbabilityTensor::from_probabilities(data, shape),
            Err(InputError::NonFinite { sample: 1, class: 1, iteration: 0, .. })
        ));
        let error = ProbabilityTensor::from_probabilities(vec![3.0, -2.0, 0.5, 0.5], &[1, 2, 2]).unwrap_err();
        assert!(matches!(error, InputError::OutOfRange { sample: 0, class: 0, iteration: 0, .. }));
        assert!(error.to_string().contains("logits=true"));
        let error = ProbabilityTensor::from_probabilities(vec![0.5, 0.5, 0.1, 0.5], &[1, 2, 2]).unwrap_err();
        assert!(matches!(error, InputError::NotNormalised { sample: 0, iteration: 0, .. }), "{error}");
    }

    #[test]
    fn shapes_must_be_three_positive_dims_matching_the_data() {
        for shape in [&[4][..], &[1, 2, 2, 1], &[0, 2, 2], &[1, 2, 3]] {
            assert!(matches!(ProbabilityTensor::from_logits(vec![0.0; 4], shape), Err(InputError::Shape { .. })));
        }
        let error = ProbabilityTensor::from_logits(vec![], &[u64::MAX, 1, 1]).unwrap_err();
        assert!(matches!(error, InputError::TooManySamples { .. }));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Any f32, with NaN, infinities, negatives, zero and values just around `[0, 1]` common.
    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            3 => 0.0f32..=1.0,
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(0.0f32),
            1 => Just(1.0f32),
            1 => Just(-0.0f32),
            1 => prop_oneof![Just(1.0 + 1e-6), Just(-1e-6f32), Just(f32::MIN_POSITIVE), Just(f32::MAX)],
            2 => any::<f32>(),
        ]
    }

    /// A shape of 0 to 4 dimensions, small or absurd.
    fn shape() -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::vec(prop_oneof![4 => 0u64..6, 1 => any::<u64>()], 0..5)
    }

    /// `[N, C, K]` probabilities: a softmax of random logits per `(n, k)`, exact one-hots mixed in.
    fn probabilities() -> impl Strategy<Value = (Vec<f32>, [u64; 3])> {
        (1usize..6, 1usize..6, 1usize..6).prop_flat_map(|(n, c, k)| {
            proptest::collection::vec(prop_oneof![3 => -20.0f32..20.0, 1 => Just(-1e4f32)], n * c * k).prop_map(
                move |logits| {
                    let mut data = logits;
                    for sample in data.chunks_exact_mut(c * k) {
                        for iteration in 0..k {
                            let max = (0..c).map(|j| sample[j * k + iteration]).fold(f32::MIN, f32::max);
                            let total: f32 = (0..c).map(|j| (sample[j * k + iteration] - max).exp()).sum();
                            (0..c).for_each(|j| {
                                sample[j * k + iteration] = (sample[j * k + iteration] - max).exp() / total
                            });
                        }
                    }
                    if c == 1 {
                        // One-output models carry the sigmoid probability itself.
                        data.iter_mut().enumerate().for_each(|(i, p)| *p = (i % 7) as f32 / 6.0);
                    }
                    (data, [n as u64, c as u64, k as u64])
                },
            )
        })
    }

    /// What the plugin ABI promises: `C >= 2`, `N·C·K` finite values in `[0, 1]`, columns summing to 1.
    fn assert_abi_valid(tensor: &ProbabilityTensor) -> Result<(), TestCaseError> {
        let (n, c, k) = (tensor.n(), tensor.c(), tensor.k());
        prop_assert!(n >= 1 && c >= 2 && k >= 1);
        prop_assert_eq!(tensor.data().len(), n * c * k);
        prop_assert!(tensor.data().iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)), "{:?}", tensor.data());
        for sample in tensor.data().chunks_exact(c * k) {
            for iteration in 0..k {
                let sum: f32 = (0..c).map(|class| sample[class * k + iteration]).sum();
                prop_assert!((sum - 1.0).abs() <= SUM_TOLERANCE, "sum {}", sum);
            }
        }
        Ok(())
    }

    /// `N·C·K`, or `None` when it overflows.
    fn volume(shape: &[u64]) -> Option<u64> {
        shape.iter().try_fold(1u64, |total, &d| total.checked_mul(d))
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(256) })]

        /// Arbitrary shapes and values: an error or an ABI-valid tensor, for either reading.
        #[test]
        fn arbitrary_inputs_never_panic(
            shape in shape(),
            data in proptest::collection::vec(value(), 0..40),
            logits in any::<bool>(),
        ) {
            let result = if logits {
                ProbabilityTensor::from_logits(data.clone(), &shape)
            } else {
                ProbabilityTensor::from_probabilities(data.clone(), &shape)
            };
            match result {
                Ok(tensor) => {
                    assert_abi_valid(&tensor)?;
                    prop_assert_eq!(shape.len(), 3);
                    prop_assert_eq!(volume(&shape), Some(data.len() as u64));
                }
                Err(InputError::Shape { .. } | InputError::TooManySamples { .. }) => {
                    let fits = volume(&shape) == Some(data.len() as u64);
                    prop_assert!(shape.len() != 3 || !fits || shape.contains(&0) || shape[0] > u64::from(u32::MAX));
                }
                Err(InputError::NonFinite { value, .. }) => prop_assert!(!value.is_finite()),
                Err(InputError::OutOfRange { value, .. }) => {
                    prop_assert!(!logits && !(0.0..=1.0).contains(&value));
                }
                Err(InputError::NotNormalised { sum, .. }) => {
                    prop_assert!(!logits && (sum - 1.0).abs() > SUM_TOLERANCE);
                }
            }
        }

        /// The error names the first bad value by its `(n, c, k)` position.
        #[test]
        fn non_finite_values_are_named_by_position(
            (data, shape) in probabilities(),
            at in any::<proptest::sample::Index>(),
            bad in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)],
            logits in any::<bool>(),
        ) {
            let mut data = data;
            let i = at.index(data.len());
            data[i] = bad;
            let (c, k) = (shape[1] as usize, shape[2] as usize);
            let result = if logits {
                ProbabilityTensor::from_logits(data, &shape)
            } else {
                ProbabilityTensor::from_probabilities(data, &shape)
            };
            let (sample, class, iteration) = (i / (c * k), (i / k) % c, i % k);
            match result {
                Err(InputError::NonFinite { sample: s, class: cl, iteration: it, .. }) => {
                    prop_assert_eq!((s, cl, it), (sample, class, iteration));
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn valid_probabilities_pass((data, shape) in probabilities()) {
            let tensor = ProbabilityTensor::from_probabilities(data.clone(), &shape).unwrap();
            assert_abi_valid(&tensor)?;
            prop_assert_eq!(tensor.n() as u64, shape[0]);
            if shape[1] >= 2 {
                prop_assert_eq!(tensor.data(), &data[..]);
            }
        }

        /// Any finite logits, however extreme, become ABI-valid probabilities.
        #[test]
        fn finite_logits_always_become_probabilities(
            (n, c, k) in (1u64..5, 1u64..5, 1u64..5),
            seed in proptest::collection::vec(
                prop_oneof![-1e3f32..1e3, Just(f32::MAX), Just(f32::MIN), Just(0.0f32)],
                64,
            ),
        ) {
            let data: Vec<f32> = (0..(n * c * k) as usize).map(|i| seed[i % seed.len()]).collect();
            let tensor = ProbabilityTensor::from_logits(data, &[n, c, k]).unwrap();
            assert_abi_valid(&tensor)?;
        }

        /// Probabilities in `[0, 1]` whose columns miss 1 by more than the tolerance are refused.
        #[test]
        fn unnormalised_probabilities_are_refused((data, shape) in probabilities(), scale in 1.01f32..3.0) {
            prop_assume!(shape[1] >= 2);
            let scaled: Vec<f32> = data.iter().map(|p| p / scale).collect();
            let error = ProbabilityTensor::from_probabilities(scaled, &shape).unwrap_err();
            prop_assert!(matches!(error, InputError::NotNormalised { sample: 0, iteration: 0, .. }), "{}", error);
        }
    }
}
