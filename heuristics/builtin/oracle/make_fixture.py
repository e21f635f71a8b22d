"""Generate the Baal 2.1.0 oracle fixture for the built-in ALPS heuristics.

What it does
------------
Builds a handful of fixed probability tensors ``P[n, c, k]`` (shape ``[N, C, K]``: samples,
classes, MC iterations; each ``P[n, :, k]`` is a probability vector), scores them with
Baal 2.1.0 (``baal.active.heuristics``) and writes the per-sample scores to
``heuristics/builtin/oracle/baal_2_1_0.json`` next to this script. The Rust tests of
``heuristics/builtin`` compare the built-in heuristics against that file (scores, not ranks;
~1e-5 relative). See ``specs/heuristics.md`` for the formulas and conventions.

The inputs are drawn with ``numpy.random.default_rng(SEED)``, cast to float32 (the Rust side
works in f32), and Baal receives the float64 version of exactly those float32 values, so the only
difference between the fixture and the Rust side is the arithmetic. Nothing is renormalised after
the float32 cast (column sums may be off by ~1e-7).

How to run: from the repository root, in a virtual environment with
``pip install baal==2.1.0 numpy`` (it pulls scipy and torch)::

    python heuristics/builtin/oracle/make_fixture.py

e.g. ``python3 -m venv /tmp/oracle-venv && /tmp/oracle-venv/bin/pip install baal==2.1.0 numpy``
then ``/tmp/oracle-venv/bin/python heuristics/builtin/oracle/make_fixture.py``.

The output ``baal_2_1_0.json`` is committed to the repository; rerun only to regenerate it. The
output is deterministic for a given numpy version (numpy does not promise stable ``Generator``
streams across releases, so the numpy and scipy versions used are recorded in the file).

Baal mapping and what Baal's ``compute_score`` actually does (read from the 2.1.0 source)
-----------------------------------------------------------------------------------------
All classes are built with their defaults (``shuffle_prop`` left at its deprecated default,
i.e. no shuffling, which only affects ranks anyway):

* ``bald``  = ``BALD()`` (reduction 'none'). ``compute_score`` = ``H(mean_k P) - mean_k H(P)``
  with ``scipy.special.xlogy`` (so 0 ln 0 = 0). Decorated with ``requireprobs``.
* ``entropy`` = ``Entropy()`` (reduction 'none'). ``compute_score`` averages over the last axis
  (``singlepass``) and calls ``scipy.stats.entropy`` over the class axis. NOTE:
  ``scipy.stats.entropy`` *renormalises* ``pbar`` to sum 1 before ``-sum(entr(p))``; the spec
  formula does not. With float32 inputs the two differ by ~1e-7 relative; both are recorded.
* ``variance`` = ``Variance()`` whose default reduction is already 'mean'. NOTE:
  ``Variance.compute_score`` returns ``np.var(P, -1)`` with shape ``[N, C]`` (population
  variance, ddof=0); Baal applies the reduction only in ``get_uncertainties``. This script
  therefore uses ``h.reduction(h.compute_score(P))`` (mean over classes) to get shape ``[N]``.
  Not decorated with ``requireprobs``.
* ``margin`` = ``Margin()`` (reduction 'none'). ``singlepass`` mean over k, then
  ``sort(axis=1)[:, -1] - sort(axis=1)[:, -2]``. Decorated with ``requireprobs``.
* ``least_confidence`` = ``Certainty()`` (reduction 'none'). ``singlepass`` mean over k, then
  ``max`` over classes. No ``requireprobs``.

``requireprobs`` calls ``baal.utils.array_utils.to_prob``, which softmaxes the *whole array* if
any value is outside [0, 1] or if ``np.allclose(P.sum(1), 1)`` fails (rtol 1e-5, atol 1e-8).
This script asserts that ``to_prob`` returns its input unchanged for every case, so no softmax
is ever applied. No epsilon or clipping is involved anywhere in these five scores.

Cross-check: every score is also computed directly from the spec formula in numpy float64. When
Baal and the formula differ by more than float64 round-off, the case stores both ``expected``
(Baal) and ``spec`` (formula) for that heuristic and a warning is printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import importlib.metadata

import numpy as np
import scipy
from baal.active.heuristics import BALD, Certainty, Entropy, Margin, Variance
from baal.utils.array_utils import to_prob

SEED = 20250807
BAAL_VERSION = importlib.metadata.version("baal")
assert BAAL_VERSION == "2.1.0", f"need baal==2.1.0, found {BAAL_VERSION}"
GENERATOR = "heuristics/builtin/oracle/make_fixture.py"
OUT = Path(__file__).resolve().parent / "baal_2_1_0.json"
HEURISTICS = ("bald", "entropy", "variance", "margin", "least_confidence")

# Disagreement threshold between Baal and the spec formula (both float64). Scores are O(1)
# (at most ln C), so anything above this is not float64 round-off.
DISAGREE_ABS = 1e-12


# ----------------------------------------------------------------------------- inputs


def dirichlet(rng: np.random.Generator, n: int, c: int, k: int, alpha: float) -> np.ndarray:
    """[N, C, K] with an independent Dirichlet(alpha) probability vector per (n, k)."""
    x = rng.dirichlet(np.full(c, alpha), size=(n, k))  # [N, K, C]
    return np.ascontiguousarray(x.transpose(0, 2, 1))


def near_ties(rng: np.random.Generator) -> np.ndarray:
    n, c, k = 12, 4, 6
    x = 0.25 + rng.normal(0.0, 1e-4, size=(n, c, k))
    x /= x.sum(axis=1, keepdims=True)
    # Exact two-way ties of the top-2 of pbar: two classes with bit-identical columns for every k
    # (so pbar ties exactly whatever the summation order), both above the other two classes.
    for i, (a, b) in zip((0, 3, 6, 9), ((0, 1), (2, 3), (1, 3), (0, 2))):
        top = 0.251 + np.abs(rng.normal(0.0, 1e-4, size=k))
        rest = [cc for cc in range(c) if cc not in (a, b)]
        split = rng.uniform(0.499, 0.501, size=k)  # keeps both other classes below `top`
        x[i, a, :] = top
        x[i, b, :] = top
        x[i, rest[0], :] = (1.0 - 2.0 * top) * split
        x[i, rest[1], :] = (1.0 - 2.0 * top) * (1.0 - split)
    assert all(x[i, rest_c, :].max() < x[i, a, :].min()
               for i, (a, b) in zip((0, 3, 6, 9), ((0, 1), (2, 3), (1, 3), (0, 2)))
               for rest_c in range(c) if rest_c not in (a, b))
    # Exactly uniform sample: every class tied, BALD and variance exactly 0.
    x[11, :, :] = 0.25
    return x


def near_one_hot(rng: np.random.Generator) -> np.ndarray:
    n, c, k = 12, 5, 10
    x = np.zeros((n, c, k))
    for i in range(n):
        hot = i % c
        eps = 10.0 ** rng.uniform(-6.0, -3.0, size=k)  # total off-hot mass per (n, k)
        others = [cc for cc in range(c) if cc != hot]
        share = rng.dirichlet(np.ones(c - 1), size=k).T  # [C-1, K]
        x[i, hot, :] = 1.0 - eps
        x[i, others, :] = share * eps
    # 0..2: exact one-hot, same class for every k (all zeros elsewhere).
    for i in range(3):
        x[i] = 0.0
        x[i, i % c, :] = 1.0
    # 3..5: near one-hot but two of the other classes exactly zero for every k.
    for i in range(3, 6):
        hot = i % c
        zeros = [(hot + 1) % c, (hot + 3) % c]
        moved = x[i, zeros, :].sum(axis=0)
        x[i, zeros, :] = 0.0
        x[i, (hot + 2) % c, :] += moved
    # 6: exact one-hot alternating between classes 0 and 1 over k -> pbar = [.5, .5, 0, 0, 0].
    x[6] = 0.0
    x[6, 0, 0::2] = 1.0
    x[6, 1, 1::2] = 1.0
    # 7: exact one-hot on class 2, except one iteration on class 4.
    x[7] = 0.0
    x[7, 2, :] = 1.0
    x[7, 2, 3] = 0.0
    x[7, 4, 3] = 1.0
    # 8: near one-hot whose hot class flips for half of the iterations.
    x[8, :, 5:] = x[8, ::-1, 5:]
    return x


def build_cases(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    return [
        ("dirichlet_small", dirichlet(rng, 16, 3, 5, 1.0)),
        ("dirichlet_medium", dirichlet(rng, 32, 10, 20, 0.5)),
        ("dirichlet_wide", dirichlet(rng, 8, 50, 8, 0.2)),
        ("near_ties", near_ties(rng)),
        ("near_one_hot", near_one_hot(rng)),
        ("k_equals_1", dirichlet(rng, 10, 4, 1, 1.0)),
        ("c_equals_2", dirichlet(rng, 16, 2, 12, 1.0)),
    ]


# ----------------------------------------------------------------------------- scoring


def baal_scores(p: np.ndarray) -> dict[str, np.ndarray]:
    assert to_prob(p) is p, "to_prob would transform this input (softmax); fix the case"
    out = {}
    for name, h in (
        ("bald", BALD()),
        ("entropy", Entropy()),
        ("variance", Variance()),  # default reduction is 'mean' in 2.1.0
        ("margin", Margin()),
        ("least_confidence", Certainty()),
    ):
        s = np.asarray(h.compute_score(p), dtype=np.float64)
        if name == "variance":
            assert h._reduction_name == "mean"
            assert s.shape == p.shape[:2]
            s = h.reduction(s)  # Baal reduces in get_uncertainties, not in compute_score
        assert s.shape == (p.shape[0],), (name, s.shape)
        out[name] = s
    return out


def _plogp(p: np.ndarray) -> np.ndarray:
    safe = np.where(p > 0.0, p, 1.0)
    return np.where(p > 0.0, p * np.log(safe), 0.0)


def _h(p: np.ndarray, axis: int) -> np.ndarray:
    return -_plogp(p).sum(axis=axis)


def spec_scores(p: np.ndarray) -> dict[str, np.ndarray]:
    pbar = p.mean(axis=2)  # [N, C]
    ent = _h(pbar, axis=1)
    top2 = np.sort(pbar, axis=1)[:, -2:] if p.shape[1] >= 2 else None
    dev = p - p.mean(axis=2, keepdims=True)
    return {
        "bald": ent - _h(p, axis=1).mean(axis=1),
        "entropy": ent,
        "variance": (dev * dev).mean(axis=2).mean(axis=1),
        "margin": top2[:, 1] - top2[:, 0],
        "least_confidence": pbar.max(axis=1),
    }


# ----------------------------------------------------------------------------- output


def _f32(v: np.ndarray) -> str:
    # repr of the float64 equal to each float32 value: parses back to exactly that value.
    return "[" + ", ".join(repr(float(np.float32(e))) for e in v.ravel()) + "]"


def _f64(v: np.ndarray) -> str:
    return "[" + ", ".join(repr(float(e)) for e in v.ravel()) + "]"


def _scores_block(key: str, d: dict[str, np.ndarray], last: bool) -> list[str]:
    lines = [f'   "{key}": {{']
    for j, name in enumerate(d):
        sep = "," if j + 1 < len(d) else ""
        lines.append(f'    "{name}": {_f64(d[name])}{sep}')
    lines.append("   }" + ("" if last else ","))
    return lines


def main() -> int:
    rng = np.random.default_rng(SEED)
    lines = [
        "{",
        f' "generator": {json.dumps(GENERATOR)},',
        f' "baal_version": {json.dumps(BAAL_VERSION)},',
        f' "numpy_version": {json.dumps(np.__version__)},',
        f' "scipy_version": {json.dumps(scipy.__version__)},',
        f' "seed": {SEED},',
        ' "cases": [',
    ]
    cases = build_cases(rng)
    any_warning = False
    for ci, (name, raw) in enumerate(cases):
        p32 = raw.astype(np.float32)
        p = p32.astype(np.float64)
        assert np.all(np.isfinite(p)) and np.all(p >= 0.0) and np.all(p <= 1.0)
        expected = baal_scores(p)
        spec = spec_scores(p)
        disagree = {}
        for h in HEURISTICS:
            d = np.abs(expected[h] - spec[h])
            rel = d / np.maximum(np.abs(spec[h]), np.finfo(np.float64).tiny)
            if d.max() > DISAGREE_ABS:
                disagree[h] = spec[h]
                any_warning = True
                print(
                    f"WARNING {name}/{h}: Baal differs from spec formula: "
                    f"max abs {d.max():.3e}, max rel {rel.max():.3e}",
                    file=sys.stderr,
                )
        if name == "near_ties":
            for i in (0, 3, 6, 9, 11):
                assert expected["margin"][i] == 0.0 and spec["margin"][i] == 0.0
        n, c, k = p.shape
        sums = p.sum(axis=1)
        print(
            f"{name:17s} shape=[{n},{c},{k}] zeros={int((p32 == 0).sum())} "
            f"max|sum-1|={np.abs(sums - 1).max():.1e} "
            + " ".join(
                f"{h}=[{expected[h].min():.3g},{expected[h].max():.3g}]" for h in HEURISTICS
            )
            + (f" spec-differs={sorted(disagree)}" if disagree else "")
        )
        lines.append("  {")
        lines.append(f'   "name": {json.dumps(name)}, "shape": [{n}, {c}, {k}],')
        lines.append(f'   "probabilities": {_f32(p32)},')
        lines += _scores_block("expected", expected, last=not disagree)
        if disagree:
            lines += _scores_block("spec", disagree, last=True)
        lines.append("  }" + ("," if ci + 1 < len(cases) else ""))
    lines += [" ]", "}"]
    text = "\n".join(lines) + "\n"

    # Round-trip checks: valid JSON, probabilities exactly the float32 values, scores exact.
    doc = json.loads(text)
    for (name, raw), case in zip(cases, doc["cases"]):
        p32 = raw.astype(np.float32)
        back = np.asarray(case["probabilities"], dtype=np.float64)
        assert np.array_equal(back.astype(np.float32).astype(np.float64), back)
        assert np.array_equal(back.reshape(case["shape"]), p32.astype(np.float64))
        exp = baal_scores(p32.astype(np.float64))
        for h in HEURISTICS:
            assert np.array_equal(np.asarray(case["expected"][h]), exp[h]), (name, h)

    OUT.write_text(text)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes){' with warnings' if any_warning else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
