//! Built-in architectures written with `tch::nn`, each split into a deterministic backbone and
//! a stochastic MC-Dropout head. Variable names follow torchvision for VGG16 and ResNet-18, so
//! converted torchvision weights load by name.

use tch::nn::{self, ModuleT};

use super::random;
use crate::projects::Architecture;

/// A network as two halves: `backbone` (eval semantics, BatchNorm on running statistics) and
/// `head` (dropout always on). `head_prefixes` name the head's variables, which may be missing
/// from or shaped differently in a weights file (a pretrained backbone with a new head).
#[derive(Debug)]
pub struct Network {
    /// Deterministic part: input `[B, C, H, W]` to features `[B, D]`.
    pub backbone: nn::SequentialT,
    /// Stochastic part: features `[B, D]` to logits `[B, classes]`.
    pub head: nn::SequentialT,
    /// Variable-name prefixes of the head.
    pub head_prefixes: &'static [&'static str],
}

/// Dropout that stays on whatever the train flag: the "MC" in MC-Dropout (Gal & Ghahramani 2016).
/// Masks come from the job's own generator ([`random`]), never from libtorch's shared one.
fn mc_dropout(p: f64) -> impl ModuleT {
    // `p` was validated with the spec (in [0, 1)), so what is left to fail is libtorch itself
    // (out of memory), where every other `tch::nn` layer of the head panics too.
    nn::func_t(move |x, _train| random::with_current(|generator| generator.dropout(x, p)).expect("dropout"))
}

fn conv(vs: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64, bias: bool) -> nn::Conv2D {
    let config = nn::ConvConfig { stride, padding, bias, ..Default::default() };
    nn::conv2d(vs, c_in, c_out, kernel, config)
}

/// Builds `architecture` for inputs `(channels, height, width)` and `classes` outputs; `None`
/// for [`Architecture::TorchScript`], which is loaded from its file instead.
pub fn build(
    vs: &nn::Path,
    architecture: Architecture,
    input: (i64, i64, i64),
    classes: i64,
    head_dropout: f64,
) -> Option<Network> {
    Some(match architecture {
        Architecture::Mlp => mlp(vs, input, classes, head_dropout),
        Architecture::SmallCnn => small_cnn(vs, input.0, classes, head_dropout),
        Architecture::Vgg16 => vgg16(vs, input.0, classes, head_dropout),
        Architecture::Resnet18 => resnet18(vs, input.0, classes, head_dropout),
        Architecture::TorchScript => return None,
    })
}

/// MLP: flatten → 256 → ReLU → 128 → ReLU (backbone, D = 128); dropout → linear (head).
fn mlp(vs: &nn::Path, (c, h, w): (i64, i64, i64), classes: i64, p: f64) -> Network {
    let backbone = vs / "backbone";
    let head = vs / "head";
    Network {
        backbone: nn::seq_t()
            .add_fn(|x| x.flatten(1, -1))
            .add(nn::linear(&backbone / "fc1", c * h * w, 256, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(&backbone / "fc2", 256, 128, Default::default()))
            .add_fn(|x| x.relu()),
        head: nn::seq_t().add(mc_dropout(p)).add(nn::linear(&head / "fc", 128, classes, Default::default())),
        head_prefixes: &["head."],
    }
}

/// Small CNN: two 3×3 conv + ReLU + 2×2 max-pool blocks (32, 64 channels), adaptive average pool
/// to 4×4, linear 1024 → 256 + ReLU (backbone, D = 256); dropout → linear (head). Any input size.
fn small_cnn(vs: &nn::Path, channels: i64, classes: i64, p: f64) -> Network {
    let backbone = vs / "backbone";
    let head = vs / "head";
    Network {
        backbone: nn::seq_t()
            .add(conv(&backbone / "conv1", channels, 32, 3, 1, 1, true))
            .add_fn(|x| x.relu().max_pool2d_default(2))
            .add(conv(&backbone / "conv2", 32, 64, 3, 1, 1, true))
            .add_fn(|x| x.relu().max_pool2d_default(2).adaptive_avg_pool2d([4, 4]).flatten(1, -1))
            .add(nn::linear(&backbone / "fc", 64 * 4 * 4, 256, Default::default()))
            .add_fn(|x| x.relu()),
        head: nn::seq_t().add(mc_dropout(p)).add(nn::linear(&head / "fc", 256, classes, Default::default())),
        head_prefixes: &["head."],
    }
}

/// VGG16 (Simonyan & Zisserman 2015, configuration D) with torchvision's variable names.
/// `classifier.0` + ReLU is deterministic and belongs to the backbone (D = 4096); the head starts
/// at the first dropout: dropout → `classifier.3` (4096) → ReLU → dropout → `classifier.6`.
fn vgg16(vs: &nn::Path, channels: i64, classes: i64, p: f64) -> Network {
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
            backbone = backbone.add(conv(&features / index, c_in, c_out, 3, 1, 1, true)).add_fn(|x| x.relu());
            c_in = c_out;
            index += 2;
        }
    }
    let backbone = backbone
        .add_fn(|x| x.adaptive_avg_pool2d([7, 7]).flatten(1, -1))
        .add(nn::linear(&classifier / 0, 512 * 7 * 7, 4096, Default::default()))
        .add_fn(|x| x.relu());
    let head = nn::seq_t()
        .add(mc_dropout(p))
        .add(nn::linear(&classifier / 3, 4096, 4096, Default::default()))
        .add_fn(|x| x.relu())
        .add(mc_dropout(p))
        .add(nn::linear(&classifier / 6, 4096, classes, Default::default()));
    Network { backbone, head, head_prefixes: &["classifier.3.", "classifier.6."] }
}

/// A ResNet basic block (two 3×3 convs with BatchNorm and a shortcut).
fn basic_block(vs: nn::Path, c_in: i64, c_out: i64, stride: i64) -> impl ModuleT + use<> {
    let conv1 = conv(&vs / "conv1", c_in, c_out, 3, stride, 1, false);
    let bn1 = nn::batch_norm2d(&vs / "bn1", c_out, Default::default());
    let conv2 = conv(&vs / "conv2", c_out, c_out, 3, 1, 1, false);
    let bn2 = nn::batch_norm2d(&vs / "bn2", c_out, Default::default());
    let downsample = (stride != 1 || c_in != c_out).then(|| {
        nn::seq_t().add(conv(&vs / "downsample" / 0, c_in, c_out, 1, stride, 0, false)).add(nn::batch_norm2d(
            &vs / "downsample" / 1,
            c_out,
            Default::default(),
        ))
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
fn resnet18(vs: &nn::Path, channels: i64, classes: i64, p: f64) -> Network {
    let mut backbone = nn::seq_t()
        .add(conv(vs / "conv1", channels, 64, 7, 2, 3, false))
        .add(nn::batch_norm2d(vs / "bn1", 64, Default::default()))
        .add_fn(|x| x.relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false));
    let mut c_in = 64;
    for (layer, c_out) in [(1, 64), (2, 128), (3, 256), (4, 512)] {
        let stride = if layer == 1 { 1 } else { 2 };
        let path = vs / format!("layer{layer}");
        backbone =
            backbone.add(basic_block(&path / 0, c_in, c_out, stride)).add(basic_block(&path / 1, c_out, c_out, 1));
        c_in = c_out;
    }
    let backbone = backbone.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1));
    let head = nn::seq_t().add(mc_dropout(p)).add(nn::linear(vs / "fc", 512, classes, Default::default()));
    Network { backbone, head, head_prefixes: &["fc."] }
}
