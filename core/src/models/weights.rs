//! Initial weights from safetensors bytes (e.g. torchvision ImageNet weights converted by
//! `scripts/convert_torchvision.py`), read with a bound by [`super::files`]. Format: the
//! safetensors specification (Hugging Face, `safetensors` crate documentation).

use std::{collections::HashMap, path::Path};

use safetensors::SafeTensors;
use tch::{Tensor, nn};

use super::ModelError;

/// Copies the tensors of safetensors `bytes` (named `path` in messages) into `vs` by name. Every backbone variable must be present with its
/// exact shape. A head variable (name starting with one of `head_prefixes`) that is missing or
/// shaped differently keeps its random initialisation: a pretrained backbone with a new head
/// sized to the project's classes. Tensors the model does not have are ignored.
///
/// # Errors
/// [`ModelError::Weights`] for bytes that are not safetensors, or naming the missing or
/// mismatched tensor.
pub fn load(vs: &mut nn::VarStore, path: &Path, bytes: &[u8], head_prefixes: &[&str]) -> Result<(), ModelError> {
    load_tensors(vs, path, &read_tensors(path, bytes)?, head_prefixes)
}

/// Every tensor of safetensors `bytes` (named `path` in messages), by name.
fn read_tensors(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Tensor>, ModelError> {
    let not_safetensors = |e: &dyn std::fmt::Display| {
        tracing::warn!(path = %path.display(), error = %e, "weights file rejected");
        ModelError::Weights { path: path.to_owned(), message: "not a safetensors file".into() }
    };
    let file = SafeTensors::deserialize(bytes).map_err(|e| not_safetensors(&e))?;
    let mut tensors = HashMap::new();
    for (name, view) in file.tensors() {
        tensors.insert(name, Tensor::try_from(view).map_err(|e| not_safetensors(&e))?);
    }
    Ok(tensors)
}

/// The message for `tensor` named `name` whose shape differs from `variable`'s.
pub(super) fn shape_mismatch(name: &str, tensor: &Tensor, variable: &Tensor) -> String {
    format!("tensor {name} has shape {:?}, the architecture needs {:?}", tensor.size(), variable.size())
}

/// Copies `tensor` into `variable` (same shape), on the variable's device and in its kind.
fn copy_into(variable: &mut Tensor, tensor: &Tensor) -> Result<(), tch::TchError> {
    variable.f_copy_(&tensor.to_device(variable.device()).to_kind(variable.kind()))
}

/// Copies the head of a head-only model version, safetensors `bytes` (named `path` in
/// messages), into `vs`: the file must hold exactly the variables whose names start with one of
/// `head_prefixes`, each with its exact shape; the backbone is loaded beforehand.
///
/// # Errors
/// [`ModelError::Weights`] for bytes that are not safetensors, or naming the missing,
/// mismatched or unexpected tensor.
pub fn load_head(vs: &mut nn::VarStore, path: &Path, bytes: &[u8], head_prefixes: &[&str]) -> Result<(), ModelError> {
    let error = |message: String| ModelError::Weights { path: path.to_owned(), message };
    let tensors = read_tensors(path, bytes)?;
    let in_head = |name: &str| head_prefixes.iter().any(|prefix| name.starts_with(prefix));
    if let Some(name) = tensors.keys().find(|name| !in_head(name)) {
        return Err(error(format!("tensor {name} is not part of the head")));
    }
    let _guard = tch::no_grad_guard();
    for (name, mut variable) in vs.variables().into_iter().filter(|(name, _)| in_head(name)) {
        let tensor = tensors.get(&name).ok_or_else(|| error(format!("tensor {name} is missing")))?;
        if tensor.size() != variable.size() {
            return Err(error(shape_mismatch(&name, tensor, &variable)));
        }
        copy_into(&mut variable, tensor)?;
    }
    Ok(())
}

/// Copies named `tensors` (from the file `path`, for messages) into `vs`, with the rules of
/// [`load`]: every backbone variable present with its exact shape, head variables optional.
///
/// # Errors
/// [`ModelError::Weights`] naming the missing or mismatched tensor.
pub fn load_tensors(
    vs: &mut nn::VarStore,
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    head_prefixes: &[&str],
) -> Result<(), ModelError> {
    let error = |message: String| ModelError::Weights { path: path.to_owned(), message };
    let _guard = tch::no_grad_guard();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept_random = Vec::new();
    for (name, mut variable) in variables {
        let in_head = head_prefixes.iter().any(|prefix| name.starts_with(prefix));
        match tensors.get(&name) {
            Some(tensor) if tensor.size() == variable.size() => copy_into(&mut variable, tensor)?,
            Some(tensor) if !in_head => return Err(error(shape_mismatch(&name, tensor, &variable))),
            None if !in_head => return Err(error(format!("tensor {name} is missing"))),
            _ => kept_random.push(name),
        }
    }
    if !kept_random.is_empty() {
        tracing::info!(path = %path.display(), head = ?kept_random, "head variables not in the file (or sized for other classes) keep their random initialisation");
    }
    Ok(())
}
