"""Convert a torchvision state_dict (.pth) to safetensors for ALPS's built-in `vgg16` and
`resnet18`, whose variable names follow torchvision.

    .venv/bin/python scripts/convert_torchvision.py resnet18.pth resnet18.safetensors

Set the file as the project's `model.weights_path`. The classifier's last layer is sized for
ImageNet's 1000 classes; for a project with other classes ALPS keeps the backbone's weights and
starts that layer from random values. BatchNorm's `num_batches_tracked` counters are dropped
(ALPS never updates BatchNorm statistics).
"""

import argparse

import torch
from safetensors.torch import save_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("state_dict", help="torchvision weights, e.g. resnet18-f37072fd.pth")
    parser.add_argument("out", help="safetensors file to write")
    args = parser.parse_args()
    state = torch.load(args.state_dict, map_location="cpu")
    tensors = {k: v.contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    save_file(tensors, args.out)
    print(f"wrote {len(tensors)} tensors to {args.out}")


if __name__ == "__main__":
    main()
