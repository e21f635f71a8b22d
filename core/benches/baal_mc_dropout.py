"""Times Baal 2.1.0's MC-Dropout prediction (`ModelWrapper.predict_on_batch(data, iterations=K)`,
which replicates the batch K times and runs the whole network) on torchvision's VGG16 with the
weights the Rust benchmark (`mc_dropout.rs`) wrote, on the same input. Prints JSON: median
seconds per batch. Run by `make bench`.
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torchvision
from baal.bayesian.dropout import MCDropoutModule
from baal.modelwrapper import ModelWrapper, TrainingArgs
from safetensors.torch import load_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--input", required=True, help="raw float32 [B, 3, 224, 224]")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = torchvision.models.vgg16(num_classes=args.classes)
    model.load_state_dict(load_file(args.weights))
    wrapper = ModelWrapper(MCDropoutModule(model), TrainingArgs(use_cuda=False, replicate_in_memory=True))
    data = torch.from_numpy(np.fromfile(args.input, dtype="<f4").reshape(args.batch, 3, 224, 224))
    wrapper.predict_on_batch(data, iterations=args.iterations)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = wrapper.predict_on_batch(data, iterations=args.iterations)
        times.append(time.perf_counter() - start)
    assert tuple(out.shape) == (args.batch, args.classes, args.iterations), out.shape
    print(json.dumps({"median_s": statistics.median(times), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
