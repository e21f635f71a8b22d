"""Times Baal 2.1.0's BALD, Entropy and Margin on a probability array written by the Rust
benchmark (`heuristics_vs_baal.rs`), so both sides score the very same `[N, C, K]` float32 array
in the same run. Prints one JSON object: median seconds per heuristic.

Run by `make bench`; by hand: python baal_heuristics.py --input probs.f32 --shape N C K --repeats R
"""

import argparse
import json
import statistics
import time

import numpy as np
from baal.active.heuristics import BALD, Entropy, Margin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True, help="raw little-endian float32, row-major [N, C, K]")
    parser.add_argument("--shape", type=int, nargs=3, required=True, metavar=("N", "C", "K"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    probabilities = np.fromfile(args.input, dtype="<f4").reshape(args.shape)
    medians = {}
    for name, heuristic in [("bald", BALD()), ("entropy", Entropy()), ("margin", Margin())]:
        heuristic.get_uncertainties(probabilities)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            # get_uncertainties is Baal's public scoring entry point (scores, not a ranking).
            heuristic.get_uncertainties(probabilities)
            times.append(time.perf_counter() - start)
        medians[name] = statistics.median(times)
    print(json.dumps(medians))


if __name__ == "__main__":
    main()
