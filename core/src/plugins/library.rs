//! Loading one plugin file through the C ABI, and calling its heuristics safely.

use std::{
    ffi::{CStr, c_char},
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use alps_heuristic_abi::{
    ABI_MAJOR, ABI_MINOR, Direction, ENTRY_SYMBOL, EntryFn, ErrorBuffer, Inputs, Kind, PluginDescriptor,
    ProbabilitiesRaw, ScoreFn, SelectFn, Status,
};

use super::{embeddings::PoolEmbeddings, input::ProbabilityTensor};

/// Bytes the host lends a plugin for an error message.
const ERROR_CAPACITY: usize = 1024;

/// Why a plugin file was rejected. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read or copied.
    #[error("{path}: cannot read or copy the plugin file: {source}")]
    Io {
        /// The plugin file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// `dlopen` failed: not a shared library, truncated, wrong architecture, missing dependency.
    #[error("{path}: not a loadable shared library: {message}")]
    Open {
        /// The plugin file.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// The library does not export `alps_heuristic_plugin`.
    #[error("{path}: no entry symbol `alps_heuristic_plugin`: not an ALPS heuristic plugin")]
    MissingEntry {
        /// The plugin file.
        path: PathBuf,
    },
    /// ABI versions are incompatible.
    #[error(
        "{path}: plugin ABI {plugin_major}.{plugin_minor} is incompatible with host ABI {ABI_MAJOR}.{ABI_MINOR} (majors must match, host minor must be >= plugin minor)"
    )]
    AbiMismatch {
        /// The plugin file.
        path: PathBuf,
        /// The plugin's ABI major.
        plugin_major: u32,
        /// The plugin's ABI minor.
        plugin_minor: u32,
    },
    /// The descriptor breaks a rule of the ABI.
    #[error("{path}: invalid descriptor: {reason}")]
    Invalid {
        /// The plugin file.
        path: PathBuf,
        /// Which rule.
        reason: String,
    },
}

impl LoadError {
    /// The plugin file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::Open { path, .. }
            | Self::MissingEntry { path }
            | Self::AbiMismatch { path, .. }
            | Self::Invalid { path, .. } => path,
        }
    }
}

/// A loaded plugin file.
#[derive(Debug)]
pub struct PluginInfo {
    /// Plugin name declared by the library.
    pub name: String,
    /// Plugin version declared by the library.
    pub version: String,
    /// The file in the plugin directory it was loaded from.
    pub source_file: PathBuf,
    /// SHA-256 of that file, lowercase hex.
    pub sha256: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

#[derive(Clone, Copy, Debug)]
enum Function {
    Score(ScoreFn),
    Select(SelectFn),
}

/// One heuristic of a loaded plugin. Its library is never unloaded, so it stays callable for
/// as long as anyone holds it, even after a reload replaced it in the registry.
#[derive(Debug)]
pub struct LoadedHeuristic {
    /// Name, e.g. `bald`.
    pub name: String,
    /// Declared version.
    pub version: semver::Version,
    /// One-line description.
    pub description: String,
    /// Which end of the score is more informative.
    pub direction: Direction,
    /// Per-sample score or batch selection.
    pub kind: Kind,
    /// What it asks for besides probabilities (ABI 1.1; probabilities only for 1.0 plugins).
    pub inputs: Inputs,
    /// The plugin it came from.
    pub plugin: Arc<PluginInfo>,
    function: Function,
}

/// Why a heuristic call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin rejected the input or arguments.
    #[error("heuristic {heuristic} rejected the input: {message}")]
    InvalidInput {
        /// `name@version`.
        heuristic: String,
        /// The plugin's message.
        message: String,
    },
    /// The heuristic asks for embeddings the call cannot offer (e.g. Predict, or Select without
    /// embeddings).
    #[error("heuristic {heuristic} needs {what}, which this call does not provide{hint}")]
    MissingInput {
        /// `name@version`.
        heuristic: String,
        /// What is missing.
        what: &'static str,
        /// Where it can be had, e.g. "; use it with Rank".
        hint: &'static str,
    },
    /// The embeddings offered do not fit the probabilities.
    #[error("heuristic {heuristic}: {message}")]
    EmbeddingShape {
        /// `name@version`.
        heuristic: String,
        /// What does not fit.
        message: String,
    },
    /// `Score` on a batch heuristic.
    #[error("heuristic {heuristic} selects batches and has no per-sample scores; use Select")]
    NotAScoreHeuristic {
        /// `name@version`.
        heuristic: String,
    },
    /// The plugin failed, panicked, or broke the ABI contract (non-finite scores, bad indices).
    #[error("heuristic {heuristic} (plugin {plugin}) failed: {message}")]
    Plugin {
        /// `name@version`.
        heuristic: String,
        /// The plugin file.
        plugin: PathBuf,
        /// What happened.
        message: String,
    },
}

/// Loads `path`: reads it, checks that it is a complete ELF shared library, writes it to
/// `<copies_dir>/<sha256>.<ext>` and `dlopen`s that copy, then reads and validates its descriptor.
///
/// # Errors
/// [`LoadError`] naming the file and the rule it broke.
pub fn load(path: &Path, copies_dir: &Path) -> Result<Vec<Arc<LoadedHeuristic>>, LoadError> {
    let io_error = |source| LoadError::Io { path: path.to_owned(), source };
    let bytes = fs::read(path).map_err(io_error)?;
    check_elf(&bytes).map_err(|message| LoadError::Open { path: path.to_owned(), message })?;
    let sha256 = crate::digest::sha256_hex(&bytes);
    // The copy holds exactly the bytes checked above, whatever happens to `path` meanwhile.
    let copy = copies_dir.join(format!("{sha256}.{}", super::PLUGIN_EXTENSION));
    if !copy.exists() {
        // Write then rename, so nothing ever dlopens a half-written copy.
        let partial = copy.with_extension("partial");
        fs::write(&partial, &bytes).and_then(|()| fs::rename(&partial, &copy)).map_err(io_error)?;
    }
    // RTLD_NOW resolves every symbol now: a plugin calling a missing function is refused here
    // instead of killing the process ("symbol lookup error") at its first call.
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
    // SAFETY: loading a library runs its initialisers; plugins are trusted code that ops put in
    // the plugin directory, the same trust as the server binary itself.
    let library: libloading::Library = unsafe { libloading::os::unix::Library::open(Some(&copy), flags) }
        .map_err(|error| LoadError::Open { path: path.to_owned(), message: error.to_string() })?
        .into();
    // Never unloaded (Triton's rule): heuristics handed out keep pointing into it.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: the symbol's type is fixed by the ABI (`EntryFn`).
    let entry = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL) }
        .map_err(|_| LoadError::MissingEntry { path: path.to_owned() })?;
    // SAFETY: the entry function takes no arguments and returns a pointer to a static descriptor.
    let pointer = unsafe { entry() };
    if pointer.is_null() {
        return Err(LoadError::Invalid { path: path.to_owned(), reason: "entry returned null".into() });
    }
    // SAFETY: non-null, and every 1.x plugin's descriptor has at least the 1.0 layout.
    let descriptor = unsafe { Descriptor::copy(pointer) };
    read_descriptor(path, &descriptor, sha256)
}

/// Rejects what `dlopen` must never see: a file that is not an ELF shared object, or one whose
/// loadable segments extend past its end. The loader maps such segments anyway and the process
/// dies of SIGBUS when it touches them (a truncated copy of a plugin does exactly that).
fn check_elf(bytes: &[u8]) -> Result<(), String> {
    use object::{FileKind, elf};
    match FileKind::parse(bytes) {
        Ok(FileKind::Elf64) => check_segments::<elf::FileHeader64<object::Endianness>>(bytes),
        Ok(FileKind::Elf32) => check_segments::<elf::FileHeader32<object::Endianness>>(bytes),
        Ok(kind) => Err(format!("not an ELF file but {kind:?}")),
        Err(error) => Err(format!("not an ELF file: {error}")),
    }
}

/// Reads only the ELF header and program headers (section headers sit at the end of the file
/// and are not needed to load it).
fn check_segments<H: object::read::elf::FileHeader<Endian = object::Endianness>>(bytes: &[u8]) -> Result<(), String> {
    use object::read::elf::ProgramHeader;
    let header = H::parse(bytes).map_err(|error| format!("bad ELF header: {error}"))?;
    let endian = header.endian().map_err(|error| format!("bad ELF header: {error}"))?;
    if header.e_type(endian) != object::elf::ET_DYN {
        return Err("not a shared library (ELF type is not ET_DYN)".into());
    }
    let segments = header.program_headers(endian, bytes).map_err(|error| format!("truncated: {error}"))?;
    let len = bytes.len() as u64;
    for segment in segments {
        let (offset, size): (u64, u64) = (segment.p_offset(endian).into(), segment.p_filesz(endian).into());
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(format!(
                "truncated: a segment spans bytes {offset}..{} but the file has {len}",
                offset.saturating_add(size)
            ));
        }
    }
    Ok(())
}

/// A plugin's descriptor, copied field by field: a 1.0 plugin's static ends before
/// `heuristic_inputs`, so the host never holds a `&PluginDescriptor` to it (a reference would
/// promise the whole 1.1 struct is readable).
struct Descriptor {
    abi_major: u32,
    abi_minor: u32,
    name: *const c_char,
    version: *const c_char,
    heuristics: *const alps_heuristic_abi::HeuristicDescriptor,
    heuristic_count: usize,
    /// Null unless the plugin declares minor 1 or later.
    heuristic_inputs: *const Inputs,
}

impl Descriptor {
    /// Reads the 1.0 fields, and the 1.1 field only from a plugin that declares minor >= 1.
    ///
    /// # Safety
    /// `pointer` is non-null and points to a descriptor with at least the ABI 1.0 layout that
    /// lives as long as the library.
    unsafe fn copy(pointer: *const PluginDescriptor) -> Self {
        use std::ptr::addr_of;
        // SAFETY: every field read here lies in the 1.0 prefix, which the caller guarantees.
        let (abi_major, abi_minor, name, version, heuristics, heuristic_count) = unsafe {
            (
                addr_of!((*pointer).abi_major).read(),
                addr_of!((*pointer).abi_minor).read(),
                addr_of!((*pointer).name).read(),
                addr_of!((*pointer).version).read(),
                addr_of!((*pointer).heuristics).read(),
                addr_of!((*pointer).heuristic_count).read(),
            )
        };
        let heuristic_inputs = if abi_major == ABI_MAJOR && abi_minor >= 1 {
            // SAFETY: a 1.1 or later descriptor has this field.
            unsafe { addr_of!((*pointer).heuristic_inputs).read() }
        } else {
            std::ptr::null()
        };
        Self { abi_major, abi_minor, name, version, heuristics, heuristic_count, heuristic_inputs }
    }
}

fn read_descriptor(
    path: &Path,
    descriptor: &Descriptor,
    sha256: String,
) -> Result<Vec<Arc<LoadedHeuristic>>, LoadError> {
    if descriptor.abi_major != ABI_MAJOR || descriptor.abi_minor > ABI_MINOR {
        return Err(LoadError::AbiMismatch {
            path: path.to_owned(),
            plugin_major: descriptor.abi_major,
            plugin_minor: descriptor.abi_minor,
        });
    }
    let invalid = |reason: String| LoadError::Invalid { path: path.to_owned(), reason };
    let plugin = Arc::new(PluginInfo {
        name: c_string(descriptor.name).ok_or_else(|| invalid("plugin name is null or not UTF-8".into()))?,
        version: c_string(descriptor.version).ok_or_else(|| invalid("plugin version is null or not UTF-8".into()))?,
        source_file: path.to_owned(),
        sha256,
        loaded_at: SystemTime::now(),
    });
    if descriptor.heuristic_count == 0 || descriptor.heuristics.is_null() {
        return Err(invalid("declares no heuristics".into()));
    }
    // SAFETY: the ABI promises `heuristic_count` descriptors at `heuristics`, living as long as
    // the (never unloaded) library.
    let entries = unsafe { std::slice::from_raw_parts(descriptor.heuristics, descriptor.heuristic_count) };
    let inputs = heuristic_inputs(descriptor).map_err(invalid)?;
    let mut heuristics: Vec<Arc<LoadedHeuristic>> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let field = |name: &str, ptr| {
            c_string(ptr).ok_or_else(|| invalid(format!("heuristic {i}: {name} is null or not UTF-8")))
        };
        let name = field("name", entry.name)?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(invalid(format!("heuristic name {name:?} must be lowercase ASCII letters, digits and '_'")));
        }
        let version = field("version", entry.version)?;
        let version = semver::Version::parse(&version)
            .map_err(|error| invalid(format!("heuristic {name}: version {version:?} is not semantic: {error}")))?;
        let direction = Direction::from_code(entry.direction)
            .ok_or_else(|| invalid(format!("heuristic {name}: unknown direction {}", entry.direction)))?;
        let (kind, function) = match (Kind::from_code(entry.kind), entry.score, entry.select) {
            (Some(Kind::Score), Some(score), None) => (Kind::Score, Function::Score(score)),
            (Some(Kind::Batch), None, Some(select)) => (Kind::Batch, Function::Select(select)),
            _ => return Err(invalid(format!("heuristic {name}: kind {} does not match its functions", entry.kind))),
        };
        if heuristics.iter().any(|h| h.name == name && h.version == version) {
            return Err(invalid(format!("heuristic {name} {version} is declared twice")));
        }
        let description = field("description", entry.description)?;
        heuristics.push(Arc::new(LoadedHeuristic {
            name,
            version,
            description,
            direction,
            kind,
            inputs: inputs[i],
            plugin: plugin.clone(),
            function,
        }));
    }
    Ok(heuristics)
}

/// What each heuristic asks for: the 1.1 `heuristic_inputs` array, read only from plugins that
/// declare minor 1 or later (a 1.0 descriptor ends before that field).
fn heuristic_inputs(descriptor: &Descriptor) -> Result<Vec<Inputs>, String> {
    let count = descriptor.heuristic_count;
    if descriptor.heuristic_inputs.is_null() {
        return Ok(vec![Inputs::PROBABILITIES; count]);
    }
    // SAFETY: ABI 1.1 promises `heuristic_count` flag words at `heuristic_inputs`, living as
    // long as the library.
    let inputs = unsafe { std::slice::from_raw_parts(descriptor.heuristic_inputs, count) };
    match inputs.iter().position(|flags| flags.0 & !Inputs::KNOWN.0 != 0) {
        Some(i) => Err(format!("heuristic {i}: unknown input flags {:#x}", inputs[i].0)),
        // The labelled-set bit implies EMBEDDINGS (the labelled set lives in the pool's
        // embedding space), so a plugin setting it alone gets both.
        None => {
            let labelled_bit = Inputs::LABELLED.0 & !Inputs::EMBEDDINGS.0;
            Ok(inputs.iter().map(|&flags| if flags.0 & labelled_bit != 0 { Inputs::LABELLED } else { flags }).collect())
        }
    }
}

/// A NUL-terminated UTF-8 string from the plugin, copied.
fn c_string(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-null pointers in descriptors are NUL-terminated strings living as long as the
    // library (ABI contract).
    unsafe { CStr::from_ptr(ptr) }.to_str().ok().map(str::to_owned)
}

impl LoadedHeuristic {
    /// `name@version`, as shown in errors and logs.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    fn plugin_error(&self, message: String) -> CallError {
        CallError::Plugin { heuristic: self.label(), plugin: self.plugin.source_file.clone(), message }
    }

    /// Turns a plugin status into a result, reading its message.
    fn check(&self, status: i32, error: &ErrorBuffer, message: &[u8]) -> Result<(), CallError> {
        let text = || String::from_utf8_lossy(&message[..error.len.min(message.len())]).into_owned();
        match Status::from_code(status) {
            Some(Status::Ok) => Ok(()),
            Some(Status::InvalidInput) => Err(CallError::InvalidInput { heuristic: self.label(), message: text() }),
            Some(Status::Internal) => Err(self.plugin_error(format!("internal error: {}", text()))),
            Some(Status::Panic) => Err(self.plugin_error(text())),
            None => Err(self.plugin_error(format!("unknown status code {status}: {}", text()))),
        }
    }

    /// Whether the heuristic asks for the pool's embeddings (and so for more than the
    /// probabilities a client or the Predict path can offer).
    pub fn needs_embeddings(&self) -> bool {
        self.inputs.contains(Inputs::EMBEDDINGS)
    }

    /// Whether the heuristic asks for the labelled set.
    pub fn needs_labelled(&self) -> bool {
        self.inputs.contains(Inputs::LABELLED)
    }

    /// The ABI input: probabilities, plus the embeddings this heuristic asked for. The view
    /// borrows `input` and `embeddings`.
    fn raw(&self, input: &ProbabilityTensor, embeddings: &PoolEmbeddings) -> Result<ProbabilitiesRaw, CallError> {
        let mut raw = input.raw();
        if !self.needs_embeddings() {
            return Ok(raw);
        }
        let missing = |what| CallError::MissingInput {
            heuristic: self.label(),
            what,
            hint: "; use it with Rank, or send embeddings with Select",
        };
        let shape = |message: String| CallError::EmbeddingShape { heuristic: self.label(), message };
        let pool = embeddings.pool.as_ref().ok_or_else(|| missing("the pool's embeddings [N, D]"))?;
        if pool.rows() != input.n() {
            return Err(shape(format!("{} embeddings for {} samples", pool.rows(), input.n())));
        }
        (raw.embeddings, raw.d) = (pool.data().as_ptr(), pool.d());
        if !self.needs_labelled() {
            return Ok(raw);
        }
        let labelled = embeddings.labelled.as_ref().ok_or_else(|| missing("the labelled set's embeddings [L, D]"))?;
        if labelled.embeddings().rows() > 0 && labelled.embeddings().d() != pool.d() {
            let (l, d) = (labelled.embeddings().d(), pool.d());
            return Err(shape(format!("labelled embeddings have dimension {l}, the pool's {d}")));
        }
        if let Some(class) = labelled.classes().iter().find(|&&class| class as usize >= input.c()) {
            return Err(shape(format!("labelled class {class} is not below C = {}", input.c())));
        }
        if !labelled.classes().is_empty() {
            raw.labelled_embeddings = labelled.embeddings().data().as_ptr();
            raw.labelled_classes = labelled.classes().as_ptr();
            raw.l = labelled.classes().len();
        }
        Ok(raw)
    }

    /// Per-sample scores `[N]` of a score heuristic; `embeddings` serve heuristics that ask.
    ///
    /// # Errors
    /// [`CallError`]: wrong kind, missing embeddings, input rejected, plugin failure, or
    /// non-finite scores.
    pub fn score(
        &self,
        input: &ProbabilityTensor,
        embeddings: &PoolEmbeddings,
        seed: u64,
    ) -> Result<Vec<f32>, CallError> {
        let Function::Score(score) = self.function else {
            return Err(CallError::NotAScoreHeuristic { heuristic: self.label() });
        };
        let raw = self.raw(input, embeddings)?;
        let mut scores = vec![f32::NAN; input.n()];
        let mut message = vec![0u8; ERROR_CAPACITY];
        let mut error = ErrorBuffer { data: message.as_mut_ptr(), capacity: message.len(), len: 0 };
        // SAFETY: `raw` views `input` and `embeddings` (borrowed for the call); `scores` has N
        // slots; `error` lends `message`. The plugin honours the ABI (trusted code, see `load`).
        let status = unsafe { score(&raw, seed, scores.as_mut_ptr(), &mut error) };
        self.check(status, &error, &message)?;
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(self.plugin_error(format!("returned a non-finite score {} for sample {i}", scores[i])));
        }
        Ok(scores)
    }

    /// Selects `query_size` samples, most informative first: (indices, scores). Batch
    /// heuristics pick jointly; score heuristics take the best scores. `embeddings` serve
    /// heuristics that ask.
    ///
    /// # Errors
    /// [`CallError`]: missing embeddings, input rejected, plugin failure, or an invalid
    /// selection.
    pub fn select(
        &self,
        input: &ProbabilityTensor,
        embeddings: &PoolEmbeddings,
        query_size: usize,
        seed: u64,
    ) -> Result<(Vec<u32>, Vec<f32>), CallError> {
        let select = match self.function {
            Function::Select(select) => select,
            Function::Score(_) => {
                let scores = self.score(input, embeddings, seed)?;
                let order = super::registry::most_informative_first(&scores, self.direction);
                let indices: Vec<u32> = order.into_iter().take(query_size).collect();
                let picked = indices.iter().map(|&i| scores[i as usize]).collect();
                return Ok((indices, picked));
            }
        };
        let raw = self.raw(input, embeddings)?;
        let mut indices = vec![u32::MAX; query_size];
        let mut scores = vec![f32::NAN; query_size];
        let mut message = vec![0u8; ERROR_CAPACITY];
        let mut error = ErrorBuffer { data: message.as_mut_ptr(), capacity: message.len(), len: 0 };
        // SAFETY: as in `score`, with `query_size` slots in each output.
        let status = unsafe { select(&raw, query_size, seed, indices.as_mut_ptr(), scores.as_mut_ptr(), &mut error) };
        self.check(status, &error, &message)?;
        let mut seen = vec![false; input.n()];
        for &index in &indices {
            let slot = seen.get_mut(index as usize).ok_or_else(|| {
                self.plugin_error(format!("selected index {index} outside the pool of {}", input.n()))
            })?;
            if std::mem::replace(slot, true) {
                return Err(self.plugin_error(format!("selected index {index} twice")));
            }
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(self.plugin_error(format!("returned a non-finite score for selection {i}")));
        }
        Ok((indices, scores))
    }
}
