//! Built-in architectures written with `tch::nn`, each split into a deterministic backbone and
//! a stochastic MC-Dropout head. Variable names follow torchvision for VGG16 and ResNet-18, so
//! converted torchvision weights load by name.

use tch::nn::{self, ModuleT};

use super::random;
use crate::projects::Architecture;

/// A network as two halves: `backbone` (eval semantics, BatchNorm on running statistics) and
/// `head` (dropout always on). `head_prefixes` name the head's variables, which may be missing
/// from or shaped differently in a weights file (a pretrained backbone with a new head);
/// `last_layer_prefixes` name those of its last linear layer, the only ones a head-only retrain
/// changes.
#[derive(Debug)]
pub struct Network {
    /// Deterministic part: input `[B, C, H, W]` to features `[B, D]`.
    pub backbone: nn::SequentialT,
    /// Stochastic part: features `[B, D]` to logits `[B, classes]`.
    pub head: nn::SequentialT,
    /// Variable-name prefixes of the head.
    pub head_prefixes: &'static [&'static str],
    /// Variable-name prefixes of the head's last linear layer (`[classes, D']` and `[classes]`):
    /// what a head-only retrain trains and a head-only version stores.
    pub last_layer_prefixes: &'static [&'static str],
}

/// How a new network's parameters start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// torchvision's random initialisation, drawn from libtorch's generator.
    Random,
    /// Zeros, for a network whose every variable is replaced next: no random draws, which for
    /// VGG16's 138 M parameters cost about half a second of CPU.
    Zeros,
}

impl Fill {
    fn linear(self) -> nn::LinearConfig {
        match self {
            Self::Random => Default::default(),
            Self::Zeros => {
                nn::LinearConfig { ws_init: nn::Init::Const(0.), bs_init: Some(nn::Init::Const(0.)), bias: true }
            }
        }
    }

    /// A convolution's configuration; `layout` is (stride, padding, bias).
    fn conv(self, (stride, padding, bias): (i64, i64, bool)) -> nn::ConvConfig {
        let config = nn::ConvConfig { stride, padding, bias, ..Default::default() };
        match self {
            Self::Random => config,
            Self::Zeros => nn::ConvConfig { ws_init: nn::Init::Const(0.), bs_init: nn::Init::Const(0.), ..config },
        }
    }

    fn batch_norm(self) -> nn::BatchNormConfig {
        match self {
            // tch's default draws BatchNorm weights from U(0, 1).
            Self::Random => Default::default(),
            Self::Zeros => nn::BatchNormConfig { ws_init: nn::Init::Const(0.), ..Default::default() },
        }
    }
}

fn linear(vs: nn::Path, in_dim: i64, out_dim: i64, fill: Fill) -> nn::Linear {
    nn::linear(vs, in_dim, out_dim, fill.linear())
}

/// Dropout that stays on whatever the train flag: the "MC" in MC-Dropout (Gal & Ghahramani 2016).
/// Masks come from the job's own generator ([`random`]), never from libtorch's shared one.
fn mc_dropout(p: f64) -> impl ModuleT {
    // `p` was validated with the spec (in [0, 1)), so what is left to fail is libtorch itself
    // (out of memory), where every other `tch::nn` layer of the head panics too.
    nn::func_t(move |x, _train| random::with_current(|generator| generator.dropout(x, p)).expect("dropout"))
}

/// A 2-D convolution `[c_out, c_in, kernel, kernel]`; `layout` is (stride, padding, bias).
fn conv(vs: nn::Path, c_in: i64, c_out: i64, kernel: i64, layout: (i64, i64, bool), fill: Fill) -> nn::Conv2D {
    nn::conv2d(vs, c_in, c_out, kernel, fill.conv(layout))
}

/// The shape of a built-in network: inputs `(channels, height, width)`, `classes` outputs, the
/// head's dropout probability.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// `(C, H, W)` of one input.
    pub input: (i64, i64, i64),
    /// Outputs.
    pub classes: i64,
    /// Dropout probability of the head, in [0, 1).
    pub head_dropout: f64,
}

/// Builds `architecture` of `shape` with its parameters started as `fill` says; `None` for
/// [`Architecture::TorchScript`], which is loaded from its file instead.
pub fn build(vs: &nn::Path, architecture: Architecture, shape: Shape, fill: Fill) -> Option<Network> {
    let Shape { input, classes, head_dropout: p } = shape;
    Some(match architecture {
        Architecture::Mlp => mlp(vs, input, classes, p, fill),
        Architecture::SmallCnn => small_cnn(vs, input.0, classes, p, fill),
        Architecture::Vgg16 => vgg16(vs, input.0, classes, p, fill),
        Architecture::Resnet18 => resnet18(vs, input.0, classes, p, fill),
        Architecture::TorchScript => return None,
    })
}

/// MLP: flatten → 256 → ReLU → 128 → ReLU (backbone, D = 128); dropout → linear (head).
fn mlp(vs: &nn::Path, (c, h, w): (i64, i64, i64), classes: i64, p: f64, fill: Fill) -> Network {
    let backbone = vs / "backbone";
    let head = vs / "head";
    Network {
        backbone: nn::seq_t()
            .add_fn(|x| x.flatten(1, -1))
            .add(linear(&backbone / "fc1", c * h * w, 256, fill))
            .add_fn(|x| x.relu())
            .add(linear(&backbone / "fc2", 256, 128, fill))
            .add_fn(|x| x.relu()),
        head: nn::seq_t().add(mc_dropout(p)).add(linear(&head / "fc", 128, classes, fill)),
        head_prefixes: &["head."],
        last_layer_prefixes: &["head.fc."],
    }
}

/// Small CNN: two 3×3 conv + ReLU + 2×2 max-pool blocks (32, 64 channels), adaptive average pool
/// to 4×4, linear 1024 → 256 + ReLU (backbone, D = 256); dropout → linear (head). Any input size.
fn small_cnn(vs: &nn::Path, channels: i64, classes: i64, p: f64, fill: Fill) -> Network {
    let backbone = vs / "backbone";
    let head = vs / "head";
    Network {
        backbone: nn::seq_t()
            .add(conv(&backbone / "conv1", channels, 32, 3, (1, 1, true), fill))
            .add_fn(|x| x.relu().max_pool2d_default(2))
            .add(conv(&backbone / "conv2", 32, 64, 3, (1, 1, true), fill))
            .add_fn(|x| x.relu().max_pool2d_default(2).adaptive_avg_pool2d([4, 4]).flatten(1, -1))
            .add(linear(&backbone / "fc", 64 * 4 * 4, 256, fill))
            .add_fn(|x| x.relu()),
        head: nn::seq_t().add(mc_dropout(p)).add(linear(&head / "fc", 256, classes, fill)),
        head_prefixes: &["head."],
        last_layer_prefixes: &["head.fc."],
    }
}

/// VGG16 (Simonyan & Zisserman 2015, configuration D) with torchvision's variable names.
/// `classifier.0` + ReLU is deterministic and belongs to the backbone (D = 4096); the head starts
/// at the first dropout: dropout → `classifier.3` (4096) → ReLU → dropout → `classifier.6`.
/// A head-only retrain trains `classifier.6` alone (`[classes, 4096]`: 160 KiB for 10 classes),
/// so a head-only version is kilobytes; `classifier.3` (64 MiB) stays its backbone's.
fn vgg16(vs: &nn::Path, channels: i64, classes: i64, p: f64, fill: Fill) -> Network {
    const CONFIG: [i64; 18] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];
    let features = vs / "features";
    let classifier = vs / "classifier";
    let mut backbone = nn::seq_t();
    let mut c_in = channels;
    // torchvision numbers every layer of `features`, ReLUs and pools included.
    let mut index = 0;
    for c_out in CONFIG {
        if c_out == 0 {
            backbone = backbone.add_fn(|x| x.max_pool2d_default(2));
            index += 1;
        } else {
            backbone = backbone.add(conv(&features / index, c_in, c_out, 3, (1, 1, true), fill)).add_fn(|x| x.relu());
            c_in = c_out;
            index += 2;
        }
    }
    let backbone = backbone
        .add_fn(|x| x.adaptive_avg_pool2d([7, 7]).flatten(1, -1))
        .add(linear(&classifier / 0, 512 * 7 * 7, 4096, fill))
        .add_fn(|x| x.relu());
    let head = nn::seq_t()
        .add(mc_dropout(p))
        .add(linear(&classifier / 3, 4096, 4096, fill))
        .add_fn(|x| x.relu())
        .add(mc_dropout(p))
        .add(linear(&classifier / 6, 4096, classes, fill));
    Network {
        backbone,
        head,
        head_prefixes: &["classifier.3.", "classifier.6."],
        last_layer_prefixes: &["classifier.6."],
    }
}

/// A ResNet basic block (two 3×3 convs with BatchNorm and a shortcut).
fn basic_block(vs: nn::Path, c_in: i64, c_out: i64, stride: i64, fill: Fill) -> impl ModuleT + use<> {
    let conv1 = conv(&vs / "conv1", c_in, c_out, 3, (stride, 1, false), fill);
    let bn1 = nn::batch_norm2d(&vs / "bn1", c_out, fill.batch_norm());
    let conv2 = conv(&vs / "conv2", c_out, c_out, 3, (1, 1, false), fill);
    let bn2 = nn::batch_norm2d(&vs / "bn2", c_out, fill.batch_norm());
    let downsample =
        (stride != 1 || c_in != c_out).then(|| {
            nn::seq_t()
                .add(conv(&vs / "downsample" / 0, c_in, c_out, 1, (stride, 0, false), fill))
                .add(nn::batch_norm2d(&vs / "downsample" / 1, c_out, fill.batch_norm()))
        });
    nn::func_t(move |x, train| {
        let y = x.apply(&conv1).apply_t(&bn1, train).relu().apply(&conv2).apply_t(&bn2, train);
        let shortcut = match &downsample {
            Some(down) => x.apply_t(down, train),
            None => x.shallow_clone(),
        };
        (y + shortcut).relu()
    })
}

/// ResNet-18 (He et al. 2016) with torchvision's variable names. Backbone up to the global
/// average pool (D = 512); head: dropout → `fc`.
fn resnet18(vs: &nn::Path, channels: i64, classes: i64, p: f64, fill: Fill) -> Network {
    let mut backbone = nn::seq_t()
        .add(conv(vs / "conv1", channels, 64, 7, (2, 3, false), fill))
        .add(nn::batch_norm2d(vs / "bn1", 64, fill.batch_norm()))
        .add_fn(|x| x.relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false));
    let mut c_in = 64;
    for (layer, c_out) in [(1, 64), (2, 128), (3, 256), (4, 512)] {
        let stride = if layer == 1 { 1 } else { 2 };
        let path = vs / format!("layer{layer}");
        backbone = backbone.add(basic_block(&path / 0, c_in, c_out, stride, fill)).add(basic_block(
            &path / 1,
            c_out,
            c_out,
            1,
            fill,
        ));
        c_in = c_out;
    }
    let backbone = backbone.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1));
    let head = nn::seq_t().add(mc_dropout(p)).add(linear(vs / "fc", 512, classes, fill));
    Network { backbone, head, head_prefixes: &["fc."], last_layer_prefixes: &["fc."] }
}
