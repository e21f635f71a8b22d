"""Export a PyTorch classifier as a TorchScript file that ALPS serves with MC-Dropout.

ALPS runs the deterministic part of a model once per sample and only the stochastic head K times
(MC-Dropout, Gal & Ghahramani 2016). A TorchScript model tells ALPS where that split is by
exporting two methods:

    features(x: Tensor[B, C, H, W]) -> Tensor[B, ...]   # deterministic, BatchNorm in eval mode
    head(z: Tensor[B, ...]) -> Tensor[B, classes]       # logits; dropout always on

A model with only `forward` still works: ALPS then replicates the batch K times (slower), and the
model must apply dropout itself for the passes to differ.

Usage (in the project venv, `.venv/bin/python`):

    # a torchvision architecture, with weights you downloaded yourself (a state_dict .pth file)
    python scripts/export_torchscript.py --torchvision resnet18 --weights resnet18.pth \
        --classes 10 --out resnet18-alps.pt

    # an ALPS built-in architecture (mlp, small_cnn) re-created in PyTorch, from a safetensors
    # file with ALPS's variable names; without --safetensors, random weights are written there
    python scripts/export_torchscript.py --alps small_cnn --input 3 32 32 --classes 2 \
        --safetensors weights.safetensors --out small_cnn.pt

Then create the project with architecture ARCHITECTURE_TORCHSCRIPT and torchscript_path set to
the .pt file, and preprocessing (input size, channels, mean/std) matching the model.
"""

import argparse
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


class McDropout(nn.Module):
    """Dropout that stays on in eval mode: the stochastic part of MC-Dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, training=True)


class Split(nn.Module):
    """A model exported as `features` + `head` (and `forward` = head(features(x)))."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.classifier = head

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @torch.jit.export
    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def torchvision_split(name: str, weights: str, classes: int, p: float) -> Split:
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu"))
    if name.startswith("resnet"):
        fc = model.fc if model.fc.out_features == classes else nn.Linear(model.fc.in_features, classes)
        model.fc = nn.Identity()
        return Split(nn.Sequential(model, nn.Flatten(1)), nn.Sequential(McDropout(p), fc))
    if name.startswith("vgg"):
        c = model.classifier
        last = c[6] if c[6].out_features == classes else nn.Linear(c[6].in_features, classes)
        # classifier[0] + ReLU are deterministic: they belong to the backbone (run once).
        backbone = nn.Sequential(model.features, model.avgpool, nn.Flatten(1), c[0], c[1])
        return Split(backbone, nn.Sequential(McDropout(p), c[3], c[4], McDropout(p), last))
    raise SystemExit(f"unsupported torchvision model {name!r}: use resnet* or vgg*")


class AlpsMlp(nn.Module):
    """ALPS's `mlp` (core/src/models/architectures.rs) with its variable names."""

    def __init__(self, inputs: int, classes: int, p: float):
        super().__init__()
        self.backbone = nn.ModuleDict({"fc1": nn.Linear(inputs, 256), "fc2": nn.Linear(256, 128)})
        self.head = nn.ModuleDict({"fc": nn.Linear(128, classes)})
        self.p = p

    def split(self) -> Split:
        b = self.backbone
        backbone = nn.Sequential(nn.Flatten(1), b["fc1"], nn.ReLU(), b["fc2"], nn.ReLU())
        return Split(backbone, nn.Sequential(McDropout(self.p), self.head["fc"]))


class AlpsSmallCnn(nn.Module):
    """ALPS's `small_cnn` (core/src/models/architectures.rs) with its variable names."""

    def __init__(self, channels: int, classes: int, p: float):
        super().__init__()
        self.backbone = nn.ModuleDict(
            {
                "conv1": nn.Conv2d(channels, 32, 3, padding=1),
                "conv2": nn.Conv2d(32, 64, 3, padding=1),
                "fc": nn.Linear(64 * 4 * 4, 256),
            }
        )
        self.head = nn.ModuleDict({"fc": nn.Linear(256, classes)})
        self.p = p

    def split(self) -> Split:
        b = self.backbone
        backbone = nn.Sequential(
            b["conv1"], nn.ReLU(), nn.MaxPool2d(2),
            b["conv2"], nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(1), b["fc"], nn.ReLU(),
        )
        return Split(backbone, nn.Sequential(McDropout(self.p), self.head["fc"]))


def alps_split(name: str, shape: list, classes: int, p: float, safetensors: str) -> Split:
    channels, height, width = shape
    model = AlpsMlp(channels * height * width, classes, p) if name == "mlp" else AlpsSmallCnn(channels, classes, p)
    if safetensors and os.path.exists(safetensors):
        model.load_state_dict(load_file(safetensors))
    elif safetensors:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, safetensors)
        print(f"wrote random weights to {safetensors}")
    return model.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--torchvision", help="torchvision architecture: resnet18, resnet34, resnet50, vgg16, ...")
    source.add_argument("--alps", choices=["mlp", "small_cnn"], help="an ALPS built-in architecture")
    parser.add_argument("--weights", default="", help="torchvision state_dict (.pth) to load")
    parser.add_argument("--safetensors", default="", help="--alps: weights to load, or where to write random ones")
    parser.add_argument("--input", type=int, nargs=3, default=[3, 224, 224], metavar=("C", "H", "W"))
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--dropout", type=float, default=0.5, help="head dropout probability")
    parser.add_argument("--out", required=True, help="TorchScript file to write")
    args = parser.parse_args()

    if args.torchvision:
        model = torchvision_split(args.torchvision, args.weights, args.classes, args.dropout)
    else:
        model = alps_split(args.alps, args.input, args.classes, args.dropout, args.safetensors)
    model.eval()  # BatchNorm on running statistics; McDropout ignores the mode
    scripted = torch.jit.script(model)
    with torch.no_grad():
        logits = scripted.head(scripted.features(torch.zeros(1, *args.input)))
    assert logits.shape == (1, args.classes), f"head outputs {tuple(logits.shape)}, expected (1, {args.classes})"
    scripted.save(args.out)
    print(f"wrote {args.out}: features {tuple(scripted.features(torch.zeros(1, *args.input)).shape)} -> head -> {args.classes} classes")


if __name__ == "__main__":
    main()
