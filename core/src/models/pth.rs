//! Reads the state dict (variable name → tensor) of a PyTorch `torch.save` file, such as
//! torchvision's published weights, without Python.
//!
//! Sources of the format: PyTorch's "Serialization semantics" notes and `torch/serialization.py`
//! (the two containers below), `torch/_utils.py` (`_rebuild_tensor_v2`) and Python's `pickle`
//! / `pickletools` documentation (the opcodes). Two containers exist:
//!
//! * **zip** (the default since PyTorch 1.6): a zip archive of stored (uncompressed) entries
//!   under one top folder: `<top>/data.pkl` holds the pickled object, in which every storage is a
//!   persistent id `("storage", <dtype>Storage, key, location, numel)`, and `<top>/data/<key>`
//!   holds that storage's raw bytes; `<top>/byteorder`, when present, says `little` or `big`.
//! * **legacy** (before 1.6; torchvision's `vgg16-397923af.pth` is one): five things written one
//!   after the other: a pickled magic number, a pickled protocol version (1001), a pickled dict of
//!   system information (`little_endian`), the pickled object (persistent ids carry a sixth,
//!   view, element), a pickled list of storage keys, and then, for each of those keys in order,
//!   the storage as a little-endian `i64` element count followed by its raw bytes.
//!
//! In both, a tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.
//! The pickle is interpreted, never executed: only the few globals a state dict uses are
//! recognised (`collections.OrderedDict`, the tensor and parameter rebuild functions, the typed
//! storages); any other global, opcode or shape that does not fit its storage is an error.

use std::{cell::RefCell, collections::HashMap, io::Read, rc::Rc};

use tch::{Kind, Tensor};

/// Why a file is not a readable state dict. Messages describe the file, never server internals.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    /// The bytes are not a `torch.save` state dict this reader understands.
    #[error("not a PyTorch state dict: {0}")]
    Format(String),
    /// libtorch refused to build a tensor from the stored bytes.
    #[error("building a tensor failed: {0}")]
    Torch(#[from] tch::TchError),
}

fn format(message: impl Into<String>) -> PthError {
    PthError::Format(message.into())
}

/// The magic number a legacy `torch.save` file starts with (`torch/serialization.py`).
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The protocol version that follows it.
const LEGACY_PROTOCOL: i128 = 1001;
/// Most values on the pickle stack or in its memo: far above a state dict's needs.
const MAX_ITEMS: usize = 1 << 20;

/// Reads every tensor of the state dict stored in `bytes` (either container), as contiguous CPU
/// tensors, in file order.
///
/// # Errors
/// [`PthError`] for anything but a pickled dict of tensors in one of the two containers.
pub fn read_state_dict(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, PthError> {
    if bytes.starts_with(b"PK\x03\x04") { read_zip(bytes) } else { read_legacy(bytes) }
}

fn read_zip(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, PthError> {
    let zip_error = |e: zip::result::ZipError| format(format!("zip archive: {e}"));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(zip_error)?;
    let pickle_name = archive
        .file_names()
        .filter_map(Result::ok)
        .find(|name| name.ends_with("/data.pkl") && name.matches('/').count() == 1)
        .map(|name| name.into_owned())
        .ok_or_else(|| format("zip archive without <top>/data.pkl"))?;
    let top = pickle_name.trim_end_matches("data.pkl").to_owned();
    let mut entry = |name: &str| -> Result<Option<Vec<u8>>, PthError> {
        let mut file = match archive.by_name(name) {
            Ok(file) => file,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(zip_error(e)),
        };
        // Stored entries are never larger than the archive itself.
        let mut data = Vec::with_capacity(usize::try_from(file.size()).unwrap_or(0).min(bytes.len()));
        file.by_ref().take(bytes.len() as u64).read_to_end(&mut data).map_err(|e| format(format!("{name}: {e}")))?;
        Ok(Some(data))
    };
    if let Some(order) = entry(&format!("{top}byteorder"))?
        && order != b"little"
    {
        return Err(format("big-endian files are not supported"));
    }
    let pickle = entry(&pickle_name)?.unwrap_or_default();
    let (object, _) = Unpickler::new(&pickle).load()?;
    let mut storages = HashMap::new();
    for reference in state_dict_tensors(&object)?.iter().map(|(_, t)| &t.storage) {
        if !storages.contains_key(&reference.key) {
            let data = entry(&format!("{top}data/{}", reference.key))?
                .ok_or_else(|| format(format!("storage {} is missing", reference.key)))?;
            storages.insert(reference.key.clone(), data);
        }
    }
    build(state_dict_tensors(&object)?, &storages)
}

fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, PthError> {
    let mut offset = 0;
    let mut next = |what: &str| -> Result<Value, PthError> {
        let rest = bytes.get(offset..).unwrap_or_default();
        let (value, used) = Unpickler::new(rest).load().map_err(|e| match e {
            PthError::Format(message) => format(format!("{what}: {message}")),
            other => other,
        })?;
        offset += used;
        Ok(value)
    };
    if !matches!(next("magic number")?, Value::Int(LEGACY_MAGIC)) {
        return Err(format("neither a zip archive nor a legacy torch.save file"));
    }
    if !matches!(next("protocol version")?, Value::Int(LEGACY_PROTOCOL)) {
        return Err(format("unknown legacy protocol version"));
    }
    let system = next("system information")?;
    if let Value::Dict(items) = &system
        && items.borrow().iter().any(|(k, v)| k.as_str() == Some("little_endian") && matches!(v, Value::Bool(false)))
    {
        return Err(format("big-endian files are not supported"));
    }
    let object = next("state dict")?;
    let keys = match next("storage keys")? {
        Value::List(keys) => keys.borrow().iter().map(|k| k.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>(),
        _ => None,
    }
    .ok_or_else(|| format("storage keys are not a list of strings"))?;
    let tensors = state_dict_tensors(&object)?;
    let element_sizes: HashMap<&str, usize> =
        tensors.iter().map(|(_, t)| (t.storage.key.as_str(), element_size(t.storage.kind))).collect();
    let mut storages = HashMap::new();
    for key in keys {
        let count = bytes.get(offset..offset + 8).ok_or_else(|| format("file ends inside a storage"))?;
        let count = i64::from_le_bytes(count.try_into().unwrap_or_default());
        let size = element_sizes.get(key.as_str()).copied().unwrap_or(1);
        let length = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(size))
            .ok_or_else(|| format(format!("storage {key}: bad element count {count}")))?;
        let start = offset + 8;
        let data =
            bytes.get(start..start.saturating_add(length)).ok_or_else(|| format("file ends inside a storage"))?;
        storages.insert(key, data.to_vec());
        offset = start + length;
    }
    build(tensors, &storages)
}

/// The `(name, tensor)` items of a pickled state dict.
fn state_dict_tensors(object: &Value) -> Result<Vec<(String, Rc<TensorRef>)>, PthError> {
    let Value::Dict(items) = object else { return Err(format("the pickled object is not a dict")) };
    items
        .borrow()
        .iter()
        .map(|(key, value)| match (key.as_str(), value) {
            (Some(name), Value::Tensor(tensor)) => Ok((name.to_owned(), tensor.clone())),
            (Some(name), _) => Err(format(format!("{name} is not a tensor"))),
            _ => Err(format("a key of the dict is not a string")),
        })
        .collect()
}

/// Builds each tensor from its storage's bytes, after checking that its size, stride and offset
/// stay inside the storage.
fn build(
    tensors: Vec<(String, Rc<TensorRef>)>,
    storages: &HashMap<String, Vec<u8>>,
) -> Result<Vec<(String, Tensor)>, PthError> {
    let mut flat: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let storage = &t.storage;
        let data =
            storages.get(&storage.key).ok_or_else(|| format(format!("{name}: storage {} is missing", storage.key)))?;
        let size = element_size(storage.kind);
        if !data.len().is_multiple_of(size) {
            return Err(format(format!("{name}: storage length is not a whole number of elements")));
        }
        let numel = (data.len() / size) as i64;
        let offset = t.offset + storage.view_offset;
        let last = t.size.iter().zip(&t.stride).try_fold(offset, |acc, (&n, &s)| {
            if n < 0 || s < 0 {
                return None;
            }
            if n == 0 { Some(acc) } else { acc.checked_add((n - 1).checked_mul(s)?) }
        });
        let empty = t.size.contains(&0);
        match last {
            Some(last) if t.size.len() == t.stride.len() && offset >= 0 && (empty || last < numel) => {}
            _ => return Err(format(format!("{name}: shape {:?} does not fit its storage", t.size))),
        }
        if !flat.contains_key(storage.key.as_str()) {
            flat.insert(storage.key.clone(), Tensor::f_from_data_size(data, &[numel], storage.kind)?);
        }
        let base = &flat[storage.key.as_str()];
        out.push((name, base.f_as_strided(&t.size, &t.stride, Some(offset))?.f_contiguous()?));
    }
    Ok(out)
}

fn element_size(kind: Kind) -> usize {
    kind.elt_size_in_bytes()
}

/// A storage a tensor refers to: its key, element type and, for legacy views, where the view
/// starts in the root storage (in elements).
#[derive(Debug)]
struct StorageRef {
    key: String,
    kind: Kind,
    view_offset: i64,
}

/// A tensor as `_rebuild_tensor_v2` describes it (offset and strides in elements).
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// The globals a state dict may name; every other one is refused.
#[derive(Clone, Copy, Debug)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Kind),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Self::OrderedDict,
            // `_rebuild_tensor` (PyTorch before 0.4) takes the same first four arguments.
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Self::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Self::RebuildParameter,
            ("torch", storage) => Self::Storage(match storage {
                "FloatStorage" => Kind::Float,
                "DoubleStorage" => Kind::Double,
                "HalfStorage" => Kind::Half,
                "BFloat16Storage" => Kind::BFloat16,
                "LongStorage" => Kind::Int64,
                "IntStorage" => Kind::Int,
                "ShortStorage" => Kind::Int16,
                "CharStorage" => Kind::Int8,
                "ByteStorage" => Kind::Uint8,
                "BoolStorage" => Kind::Bool,
                _ => return None,
            }),
            _ => return None,
        })
    }
}

/// A pickled value. Lists and dicts are shared, as in Python, so that items added after an
/// object was memoised are seen through the memo.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i128),
    /// A float or bytes object: never part of a tensor's description, so only its presence is kept.
    Other,
    Str(Rc<str>),
    Tuple(Rc<[Value]>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(i) => i64::try_from(*i).ok(),
            _ => None,
        }
    }

    fn as_shape(&self) -> Option<Vec<i64>> {
        match self {
            Self::Tuple(items) => items.iter().map(Self::as_i64).collect(),
            _ => None,
        }
    }
}

/// A pickle interpreter over one pickle (up to its STOP opcode).
struct Unpickler<'a> {
    data: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PthError> {
        let end =
            self.at.checked_add(n).filter(|&end| end <= self.data.len()).ok_or_else(|| format("pickle ends early"))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, PthError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, PthError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }

    fn u64(&mut self) -> Result<u64, PthError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }

    fn line(&mut self) -> Result<&'a str, PthError> {
        let rest = &self.data[self.at..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| format("pickle ends early"))?;
        let line = self.take(end + 1)?;
        std::str::from_utf8(&line[..end]).map_err(|_| format("a global's name is not UTF-8"))
    }

    fn push(&mut self, value: Value) -> Result<(), PthError> {
        if self.stack.len() >= MAX_ITEMS {
            return Err(format("pickle stack too deep"));
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PthError> {
        if self.marks.last().is_some_and(|&mark| mark >= self.stack.len()) {
            return Err(format("pickle pops past a mark"));
        }
        self.stack.pop().ok_or_else(|| format("pickle pops an empty stack"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PthError> {
        let mark = self.marks.pop().ok_or_else(|| format("pickle has no mark"))?;
        if mark > self.stack.len() {
            return Err(format("pickle mark past the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> Result<&Value, PthError> {
        self.stack.last().ok_or_else(|| format("pickle reads an empty stack"))
    }

    fn string(&mut self, n: usize) -> Result<Value, PthError> {
        let bytes = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(bytes).into()))
    }

    fn memoize(&mut self, key: u32) -> Result<(), PthError> {
        if self.memo.len() >= MAX_ITEMS {
            return Err(format("pickle memo too large"));
        }
        let top = self.top()?.clone();
        self.memo.insert(key, top);
        Ok(())
    }

    fn get(&mut self, key: u32) -> Result<(), PthError> {
        let value = self.memo.get(&key).cloned().ok_or_else(|| format("pickle refers to an unknown memo entry"))?;
        self.push(value)
    }

    /// Interprets opcodes up to STOP; returns the value and the bytes used.
    fn load(mut self) -> Result<(Value, usize), PthError> {
        loop {
            let opcode = self.byte()?;
            match opcode {
                0x80 => drop(self.byte()?), // PROTO
                0x95 => drop(self.u64()?),  // FRAME: a hint for buffering
                b'.' => {
                    let value = self.pop()?;
                    return Ok((value, self.at));
                }
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default());
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default());
                    self.push(Value::Int(v.into()))?;
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n ≤ 16 bytes.
                    let n = usize::from(self.byte()?);
                    if n > 16 {
                        return Err(format("integer too large"));
                    }
                    let bytes = self.take(n)?;
                    let mut v: i128 = 0;
                    for (i, &b) in bytes.iter().enumerate() {
                        v |= i128::from(b) << (8 * i);
                    }
                    if n > 0 && n < 16 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    self.push(Value::Int(v))?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Other)?;
                }
                b'X' | b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8c | b'U' => {
                    let n = usize::from(self.byte()?);
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).map_err(|_| format("string too long"))?;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                b'B' | b'C' => {
                    let n = if opcode == b'B' { self.u32()? as usize } else { usize::from(self.byte()?) };
                    self.take(n)?;
                    self.push(Value::Other)?;
                }
                b')' => self.push(Value::Tuple(Rc::new([])))?,
                b']' => self.push(Value::List(Rc::default()))?,
                b'}' => self.push(Value::Dict(Rc::default()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items.into()))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.push(Value::Dict(Rc::new(RefCell::new(pairs))))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(opcode - 0x84);
                    if self.stack.len() < n || self.marks.last().is_some_and(|&m| m > self.stack.len() - n) {
                        return Err(format("pickle tuple past the stack"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items.into()))?;
                }
                b'q' => {
                    let key = self.byte()?;
                    self.memoize(key.into())?;
                }
                b'r' => {
                    let key = self.u32()?;
                    self.memoize(key)?;
                }
                0x94 => {
                    let key = u32::try_from(self.memo.len()).map_err(|_| format("pickle memo too large"))?;
                    self.memoize(key)?;
                }
                b'h' => {
                    let key = self.byte()?;
                    self.get(key.into())?;
                }
                b'j' => {
                    let key = self.u32()?;
                    self.get(key)?;
                }
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    self.push_global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(module), Some(name)) => self.push_global(module, name)?,
                        _ => return Err(format("a global's name is not a string")),
                    }
                }
                b'a' => {
                    let item = self.pop()?;
                    let Value::List(list) = self.top()? else { return Err(format("append to a non-list")) };
                    list.borrow_mut().push(item);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let Value::List(list) = self.top()? else { return Err(format("append to a non-list")) };
                    list.borrow_mut().extend(items);
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let Value::Dict(dict) = self.top()? else { return Err(format("set item of a non-dict")) };
                    dict.borrow_mut().push((key, value));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    let Value::Dict(dict) = self.top()? else { return Err(format("set item of a non-dict")) };
                    dict.borrow_mut().extend(pairs);
                }
                b'b' => {
                    // BUILD sets attributes (a state dict's `_metadata`): not needed, dropped.
                    self.pop()?;
                    self.top()?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let value = reduce(callable, args)?;
                    self.push(value)?;
                }
                b'Q' => {
                    let id = self.pop()?;
                    let value = persistent(id)?;
                    self.push(value)?;
                }
                other => return Err(format(format!("unsupported pickle opcode 0x{other:02x}"))),
            }
        }
    }

    fn push_global(&mut self, module: &str, name: &str) -> Result<(), PthError> {
        let global =
            Global::resolve(module, name).ok_or_else(|| format(format!("unsupported global {module}.{name}")))?;
        self.push(Value::Global(global))
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, PthError> {
    if !items.len().is_multiple_of(2) {
        return Err(format("odd number of dict items"));
    }
    let mut items = items.into_iter();
    let mut pairs = Vec::new();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        pairs.push((k, v));
    }
    Ok(pairs)
}

/// REDUCE: "calls" one of the recognised globals.
fn reduce(callable: Value, args: Value) -> Result<Value, PthError> {
    let Value::Tuple(args) = args else { return Err(format("call arguments are not a tuple")) };
    match callable {
        Value::Global(Global::OrderedDict) => match &args[..] {
            [] => Ok(Value::Dict(Rc::default())),
            // Python 2 pickles an OrderedDict with its items as `[[key, value], ...]`.
            [Value::List(items)] => {
                let pair = |item: &Value| match item {
                    Value::List(pair) => <[Value; 2]>::try_from(pair.borrow().clone()).ok(),
                    Value::Tuple(pair) => <[Value; 2]>::try_from(pair.to_vec()).ok(),
                    _ => None,
                };
                let pairs =
                    items.borrow().iter().map(|item| pair(item).map(|[k, v]| (k, v))).collect::<Option<Vec<_>>>();
                let pairs = pairs.ok_or_else(|| format("OrderedDict items are not pairs"))?;
                Ok(Value::Dict(Rc::new(RefCell::new(pairs))))
            }
            _ => Err(format("OrderedDict with unexpected arguments")),
        },
        Value::Global(Global::RebuildTensor) => match &args[..] {
            [Value::Storage(storage), offset, size, stride, ..] => {
                let bad = || format("malformed tensor");
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: storage.clone(),
                    offset: offset.as_i64().ok_or_else(bad)?,
                    size: size.as_shape().ok_or_else(bad)?,
                    stride: stride.as_shape().ok_or_else(bad)?,
                })))
            }
            _ => Err(format("malformed tensor")),
        },
        Value::Global(Global::RebuildParameter) => match &args[..] {
            [tensor @ Value::Tensor(_), ..] => Ok(tensor.clone()),
            _ => Err(format("malformed parameter")),
        },
        _ => Err(format("call of something other than a recognised global")),
    }
}

/// BINPERSID: a storage reference, `("storage", <dtype>Storage, key, location, numel[, view])`.
fn persistent(id: Value) -> Result<Value, PthError> {
    let bad = || format("malformed storage reference");
    let Value::Tuple(items) = id else { return Err(bad()) };
    let (kind, key, view) = match &items[..] {
        [tag, Value::Global(Global::Storage(kind)), key, _location, _numel, rest @ ..]
            if tag.as_str() == Some("storage") =>
        {
            (*kind, key, rest.first())
        }
        _ => return Err(bad()),
    };
    let key = match key {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        _ => return Err(bad()),
    };
    // A legacy view `(view_key, offset, numel)` into the root storage `key`.
    let view_offset = match view {
        None | Some(Value::None) => 0,
        Some(Value::Tuple(view)) => view.get(1).and_then(Value::as_i64).ok_or_else(bad)?,
        Some(_) => return Err(bad()),
    };
    Ok(Value::Storage(Rc::new(StorageRef { key, kind, view_offset })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protocol-2 pickle of `OrderedDict(w=<tensor of storage "0", float, shape (2, 3)>)`,
    /// written by hand with the opcodes torch.save emits.
    fn pickle(shape: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\nq\x00)Rq\x01");
        p.extend(b"X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x02(");
        p.extend(
            b"(X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ",
        );
        p.extend(b"K\x00");
        p.extend(shape);
        p.extend(stride);
        p.extend(b"\x89h\x01tR"); // requires_grad False, hooks: memo 1 (any dict)
        p.push(b's'); // SETITEM
        p.extend(b"}X\x09\x00\x00\x00_metadatah\x03sb."); // BUILD with a state, STOP
        p
    }

    fn storage() -> Vec<u8> {
        (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    #[test]
    fn a_hand_written_zip_state_dict_reads_with_its_strides() {
        let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        // Shape (3, 2) with strides (1, 3): the transpose of a row-major 2×3 storage.
        for (name, data) in [
            ("m/data.pkl", pickle(b"K\x03K\x02\x86", b"K\x01K\x03\x86")),
            ("m/byteorder", b"little".to_vec()),
            ("m/data/0", storage()),
        ] {
            archive.start_file(name, stored).unwrap();
            std::io::Write::write_all(&mut archive, &data).unwrap();
        }
        let bytes = archive.finish().unwrap().into_inner();
        let tensors = read_state_dict(&bytes).unwrap();
        assert_eq!(tensors.len(), 1);
        let (name, tensor) = &tensors[0];
        assert_eq!((name.as_str(), tensor.size()), ("w", vec![3, 2]));
        let values: Vec<f32> = Vec::try_from(tensor.flatten(0, -1)).unwrap();
        assert_eq!(values, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn a_hand_written_legacy_state_dict_reads() {
        let mut bytes = vec![0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];
        bytes.extend([0x80, 2, b'M', 0xe9, 0x03, b'.']);
        bytes.extend(b"\x80\x02}(X\x0d\x00\x00\x00little_endian\x88u.");
        bytes.extend(pickle(b"K\x02K\x03\x86", b"K\x03K\x01\x86"));
        bytes.extend(b"\x80\x02]X\x01\x00\x00\x000a.");
        bytes.extend(6i64.to_le_bytes());
        bytes.extend(storage());
        let tensors = read_state_dict(&bytes).unwrap();
        let values: Vec<f32> = Vec::try_from(tensors[0].1.flatten(0, -1)).unwrap();
        assert_eq!((tensors[0].1.size(), values), (vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
    }

    #[test]
    fn a_python2_era_legacy_file_reads() {
        // PyTorch 0.1/0.3 under Python 2 (torchvision's VGG files date from then): byte strings,
        // an OrderedDict built from `[[key, value]]`, `_rebuild_tensor` with four arguments and
        // a sixth (view) element in the storage reference.
        let mut bytes = vec![0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];
        bytes.extend([0x80, 2, b'M', 0xe9, 0x03, b'.']);
        bytes.extend(b"\x80\x02}q\x00U\x0dlittle_endianq\x01\x88s.");
        bytes.extend(b"\x80\x02ccollections\nOrderedDict\nq\x00]q\x01]q\x02(U\x01w");
        bytes.extend(b"ctorch._utils\n_rebuild_tensor\nq\x03((U\x07storageq\x04ctorch\nFloatStorage\nq\x05");
        bytes.extend(b"U\x0294q\x06U\x03cpuq\x07K\x06Ntq\x08QK\x00K\x02K\x03\x86K\x03K\x01\x86tRq\x09ea\x85R.");
        bytes.extend(b"\x80\x02]q\x00U\x0294a.");
        bytes.extend(6i64.to_le_bytes());
        bytes.extend(storage());
        let tensors = read_state_dict(&bytes).unwrap();
        let values: Vec<f32> = Vec::try_from(tensors[0].1.flatten(0, -1)).unwrap();
        assert_eq!((tensors[0].0.as_str(), values), ("w", vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
    }

    #[test]
    fn shapes_outside_their_storage_globals_and_truncation_are_refused() {
        let legacy = |shape: &[u8], stride: &[u8], storage: Vec<u8>| {
            let mut bytes = vec![0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];
            bytes.extend([0x80, 2, b'M', 0xe9, 0x03, b'.', 0x80, 2, b'}', b'.']);
            bytes.extend(pickle(shape, stride));
            bytes.extend(b"\x80\x02]X\x01\x00\x00\x000a.");
            bytes.extend(((storage.len() / 4) as i64).to_le_bytes());
            bytes.extend(storage);
            bytes
        };
        let too_big = legacy(b"K\x03K\x03\x86", b"K\x03K\x01\x86", storage());
        assert!(read_state_dict(&too_big).unwrap_err().to_string().contains("does not fit"));
        let mut truncated = legacy(b"K\x02K\x03\x86", b"K\x03K\x01\x86", storage());
        truncated.truncate(truncated.len() - 1);
        assert!(read_state_dict(&truncated).unwrap_err().to_string().contains("ends inside a storage"));
        let evil = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00idq\x00\x85R.";
        let mut bytes = vec![0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];
        bytes.extend([0x80, 2, b'M', 0xe9, 0x03, b'.', 0x80, 2, b'}', b'.']);
        bytes.extend(evil);
        assert!(read_state_dict(&bytes).unwrap_err().to_string().contains("unsupported global os.system"));
        assert!(read_state_dict(b"not a file").is_err());
    }
}
