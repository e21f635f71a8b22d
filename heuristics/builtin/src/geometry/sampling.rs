//! Picking among points: the argmax, a uniform draw, and a sum tree for drawing with probability
//! proportional to changing weights (D² sampling). All scan or descend in a fixed order, so they
//! are deterministic for a seed.

/// The unselected index with the largest `values[i]` (ties: the lower index); `None` when every
/// index is selected.
pub(crate) fn argmax_unselected(values: &[f64], selected: &[bool]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, (&value, &taken)) in values.iter().zip(selected).enumerate() {
        if !taken && best.is_none_or(|b| value > values[b]) {
            best = Some(i);
        }
    }
    best
}

/// An unselected index drawn uniformly; `None` when every index is selected.
pub(crate) fn sample_unselected(selected: &[bool], rng: &mut fastrand::Rng) -> Option<usize> {
    let free = selected.iter().filter(|taken| !**taken).count();
    if free == 0 {
        return None;
    }
    selected.iter().enumerate().filter(|(_, taken)| !**taken).nth(rng.usize(..free)).map(|(i, _)| i)
}

/// `weight` as a tree leaf: NaN (a distance between overflowing values, which the `f64` kernels
/// never produce from finite embeddings) as `+inf`, negative rounding residue as 0.
fn sanitized(weight: f64) -> f64 {
    if weight.is_nan() { f64::INFINITY } else { weight.max(0.0) }
}

/// Non-negative weights `[n]` in a complete binary tree of partial sums: set one weight and draw
/// an index with probability proportional to its weight in `O(log n)`. Each inner node is
/// recomputed as the sum of its two children (never adjusted by differences), so the sums carry
/// no drift: when every weight is 0 the total is exactly 0. Weights may be `+inf` (the total is
/// then `+inf`, and callers pick without drawing); NaN is stored as `+inf`.
#[derive(Clone, Debug)]
pub(crate) struct SumTree {
    /// Leaves in use.
    n: usize,
    /// Leaves allocated (a power of two, at least 1).
    leaves: usize,
    /// `nodes[1]` is the root, `nodes[leaves + i]` weight `i`; `nodes[0]` is unused.
    nodes: Vec<f64>,
}

impl SumTree {
    /// A tree over `weights` (each at least 0, or `+inf`).
    pub(crate) fn new(weights: &[f64]) -> Self {
        let leaves = weights.len().next_power_of_two().max(1);
        let mut nodes = vec![0.0; 2 * leaves];
        for (node, &weight) in nodes[leaves..].iter_mut().zip(weights) {
            *node = sanitized(weight);
        }
        for node in (1..leaves).rev() {
            nodes[node] = nodes[2 * node] + nodes[2 * node + 1];
        }
        Self { n: weights.len(), leaves, nodes }
    }

    /// Sum of every weight.
    pub(crate) fn total(&self) -> f64 {
        self.nodes[1]
    }

    /// Weight `i` (0 past the last weight).
    pub(crate) fn weight(&self, i: usize) -> f64 {
        if i < self.n { self.nodes[self.leaves + i] } else { 0.0 }
    }

    /// Sets weight `i` to `weight` (at least 0, or `+inf`).
    pub(crate) fn set(&mut self, i: usize, weight: f64) {
        let mut node = self.leaves + i;
        self.nodes[node] = sanitized(weight);
        while node > 1 {
            node /= 2;
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1];
        }
    }

    /// The index whose cumulative weight interval contains `target` (`0 <= target < total()`).
    /// Whenever `total() > 0` the index has a positive weight, whatever `target` is (even NaN or
    /// past the total through rounding): a descent never enters a subtree whose sum is 0, so a
    /// caller's draw always lands and its loop ends. `O(log n)` steps.
    pub(crate) fn find(&self, mut target: f64) -> usize {
        let mut node = 1;
        while node < self.leaves {
            let (left, right) = (self.nodes[2 * node], self.nodes[2 * node + 1]);
            // The interval rule, except never into a subtree of weight 0 (the other one has
            // weight whenever this node has).
            let go_left = if left > 0.0 && right > 0.0 { target < left } else { left > 0.0 };
            if go_left {
                node *= 2;
            } else {
                target -= left;
                node = 2 * node + 1;
            }
        }
        node - self.leaves
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_skips_selected_and_breaks_ties_low() {
        assert_eq!(argmax_unselected(&[1.0, 3.0, 3.0, 2.0], &[false, false, false, false]), Some(1));
        assert_eq!(argmax_unselected(&[1.0, 3.0, 3.0, 2.0], &[false, true, false, false]), Some(2));
        assert_eq!(argmax_unselected(&[1.0], &[true]), None);
        assert_eq!(sample_unselected(&[true, false, true], &mut fastrand::Rng::with_seed(0)), Some(1));
    }

    #[test]
    fn sum_tree_finds_intervals_and_returns_to_exactly_zero() {
        let mut tree = SumTree::new(&[0.0, 1.0, 0.0, 3.0, 5.0]);
        assert_eq!(tree.total(), 9.0);
        assert_eq!(
            (tree.find(0.0), tree.find(0.999), tree.find(1.0), tree.find(3.999), tree.find(8.9)),
            (1, 1, 3, 3, 4)
        );
        tree.set(4, 0.1);
        assert_eq!(tree.find(4.05), 4);
        for i in 0..5 {
            tree.set(i, 0.0);
        }
        assert_eq!(tree.total(), 0.0);
        assert_eq!(SumTree::new(&[2.0]).find(1.0), 0);
    }

    #[test]
    fn find_lands_on_a_positive_weight_for_any_target() {
        let tree = SumTree::new(&[0.0, 2.0, 0.0, 0.0, 1.0]);
        for target in [0.0, 2.5, 3.0, 1e300, f64::INFINITY, f64::NAN, -1.0] {
            assert!(tree.weight(tree.find(target)) > 0.0, "target {target}");
        }
        let infinite = SumTree::new(&[1.0, f64::INFINITY, f64::NAN, 0.0]);
        assert_eq!((infinite.total(), infinite.weight(2)), (f64::INFINITY, f64::INFINITY));
        assert!(infinite.weight(infinite.find(f64::INFINITY)) > 0.0);
    }
}
