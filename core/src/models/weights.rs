//! Initial weights from a safetensors file (e.g. torchvision ImageNet weights converted by
//! `scripts/convert_torchvision.py`).

use std::path::Path;

use tch::{Tensor, nn};

use super::ModelError;

/// Copies the file's tensors into `vs` by name. Every backbone variable must be present with its
/// exact shape. A head variable (name starting with one of `head_prefixes`) that is missing or
/// shaped differently keeps its random initialisation: a pretrained backbone with a new head
/// sized to the project's classes. Tensors the model does not have are ignored.
///
/// # Errors
/// [`ModelError::Weights`] naming the missing or mismatched tensor.
pub fn load(vs: &mut nn::VarStore, path: &Path, head_prefixes: &[&str]) -> Result<(), ModelError> {
    let error = |message: String| ModelError::Weights { path: path.to_owned(), message };
    let tensors = Tensor::read_safetensors(path).map_err(|e| error(format!("cannot read safetensors: {e}")))?;
    let tensors: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    let _guard = tch::no_grad_guard();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept_random = Vec::new();
    for (name, mut variable) in variables {
        let in_head = head_prefixes.iter().any(|prefix| name.starts_with(prefix));
        match tensors.get(&name) {
            Some(tensor) if tensor.size() == variable.size() => {
                variable.f_copy_(&tensor.to_device(variable.device()).to_kind(variable.kind()))?;
            }
            Some(tensor) if !in_head => {
                return Err(error(format!(
                    "tensor {name} has shape {:?}, the architecture needs {:?}",
                    tensor.size(),
                    variable.size()
                )));
            }
            None if !in_head => return Err(error(format!("tensor {name} is missing"))),
            _ => kept_random.push(name),
        }
    }
    if !kept_random.is_empty() {
        tracing::info!(path = %path.display(), head = ?kept_random, "head variables not in the file (or sized for other classes) keep their random initialisation");
    }
    Ok(())
}
