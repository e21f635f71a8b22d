//! The C ABI between `alps-server` (the host) and heuristic plugins: shared libraries that
//! provide acquisition functions (heuristics) over MC-Dropout predictive outputs.
//!
//! A plugin exports one symbol, [`ENTRY_SYMBOL`] (`alps_heuristic_plugin`), an `extern "C"`
//! function without arguments that returns a pointer to a static [`PluginDescriptor`]. The
//! descriptor lists [`HeuristicDescriptor`]s, each with a per-sample scoring function
//! ([`ScoreFn`]) or a batch-selection function ([`SelectFn`]).
//!
//! Rules of the boundary (see `README.md` beside this crate and `include/alps_heuristic.h`):
//! * Only `#[repr(C)]` types, raw pointers, integers and `f32` cross it; no Rust types.
//! * All buffers belong to the host; the plugin reads the input and writes into the outputs it
//!   is given. Nothing allocated on one side is freed on the other.
//! * Functions report failures with a [`Status`] code and a UTF-8 message written into the
//!   host's [`ErrorBuffer`]; they never unwind across the boundary (the trampolines generated
//!   for Rust plugins catch every panic).
//! * The host guarantees the input: `c >= 2` (a one-output sigmoid model is expanded to
//!   `{p, 1 - p}`), `n, k >= 1`, every value finite and in `[0, 1]`, every `[n, :, k]` column
//!   summing to 1 within 1e-3. Functions may be called from several threads at once.
//!
//! * Since ABI 1.1 a heuristic may ask for more than probabilities ([`Inputs`]): the pool's
//!   backbone embeddings `[N, D]` and the labelled set's embeddings `[L, D]` with their classes
//!   `[L]`. The host supplies them only to heuristics that ask.
//!
//! Rust plugin authors implement [`ScoreHeuristic`] or [`BatchHeuristic`] and list them in
//! [`export_plugin!`]; see the built-in plugin (`heuristics/builtin`) for a complete example.

use std::{
    ffi::{CStr, c_char},
    panic::{AssertUnwindSafe, catch_unwind},
};

/// Major version of this ABI. The host loads a plugin only if its major equals the host's.
/// A minor version may only append fields: to the structs the host allocates and passes in
/// ([`ProbabilitiesRaw`], [`ErrorBuffer`]; older plugins never read past the fields they know)
/// and to [`PluginDescriptor`] (read only from plugins declaring that minor or later).
/// [`HeuristicDescriptor`] is laid out as an array, so its size never changes within a major.
pub const ABI_MAJOR: u32 = 1;
/// Minor version of this ABI. The host loads a plugin only if the host's minor is at least the
/// plugin's (minors only add, never change). 1.1 added [`Inputs`], appended the embedding fields
/// to [`ProbabilitiesRaw`] and appended [`PluginDescriptor::heuristic_inputs`].
pub const ABI_MINOR: u32 = 1;
/// Name of the entry symbol every plugin exports (NUL-terminated for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"alps_heuristic_plugin\0";

/// Type of the entry symbol: returns a pointer to a descriptor that lives as long as the library.
pub type EntryFn = unsafe extern "C" fn() -> *const PluginDescriptor;

/// Outcome of a heuristic call.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Success; the outputs are filled.
    Ok = 0,
    /// The input or arguments are not acceptable to this heuristic (e.g. `query_size > n`).
    InvalidInput = 1,
    /// The heuristic failed for another reason.
    Internal = 2,
    /// The heuristic panicked; the trampoline caught it.
    Panic = 3,
}

impl Status {
    /// Decodes a status returned across the ABI; unknown codes are `None`.
    pub fn from_code(code: i32) -> Option<Self> {
        [Self::Ok, Self::InvalidInput, Self::Internal, Self::Panic].into_iter().find(|s| *s as i32 == code)
    }
}

/// Whether a higher or a lower score marks a more informative sample.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Higher = more informative (BALD, entropy, variance).
    HigherIsMoreInformative = 1,
    /// Lower = more informative (margin, least confidence as max probability).
    LowerIsMoreInformative = 2,
}

impl Direction {
    /// Decodes a direction read from a descriptor; unknown values are `None`.
    pub fn from_code(code: u32) -> Option<Self> {
        [Self::HigherIsMoreInformative, Self::LowerIsMoreInformative].into_iter().find(|d| *d as u32 == code)
    }
}

/// What a heuristic computes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One score per sample ([`HeuristicDescriptor::score`] is set).
    Score = 1,
    /// A jointly chosen batch of `query_size` samples ([`HeuristicDescriptor::select`] is set).
    Batch = 2,
}

impl Kind {
    /// Decodes a kind read from a descriptor; unknown values are `None`.
    pub fn from_code(code: u32) -> Option<Self> {
        [Self::Score, Self::Batch].into_iter().find(|k| *k as u32 == code)
    }
}

/// What a heuristic asks the host for besides the probabilities `[N, C, K]` (ABI 1.1): a set of
/// bit flags, one `u32` per heuristic in [`PluginDescriptor::heuristic_inputs`].
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inputs(pub u32);

impl Inputs {
    /// Probabilities only (every 1.0 heuristic).
    pub const PROBABILITIES: Self = Self(0);
    /// The pool's backbone embeddings `[N, D]` ([`ProbabilitiesRaw::embeddings`]).
    pub const EMBEDDINGS: Self = Self(1);
    /// The labelled set: embeddings `[L, D]` and classes `[L]`; implies [`Inputs::EMBEDDINGS`].
    pub const LABELLED: Self = Self(2 | 1);
    /// Every flag this ABI version defines; a plugin asking for another is rejected.
    pub const KNOWN: Self = Self(3);

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Host-owned input of a heuristic call. Probabilities `P[n, c, k]`, shape `[n, c, k]`, `f32`,
/// row-major (the MC-iteration axis `k` varies fastest): value at `(i, j, t)` is
/// `data[(i * c + j) * k + t]`. Since ABI 1.1, also the embeddings a heuristic asked for
/// ([`Inputs`]); the fields are null and 0 for heuristics that did not ask.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbabilitiesRaw {
    /// First of `n * c * k` values.
    pub data: *const f32,
    /// Samples N.
    pub n: usize,
    /// Classes C (at least 2).
    pub c: usize,
    /// MC iterations K.
    pub k: usize,
    /// ABI 1.1: the pool's embeddings `[n, d]`, row-major `f32` (the backbone output the model's
    /// head consumes, sample `i` at `embeddings[i * d..(i + 1) * d]`). Null unless the heuristic
    /// asked for [`Inputs::EMBEDDINGS`].
    pub embeddings: *const f32,
    /// ABI 1.1: embedding dimension D; at least 1 when `embeddings` is set, else 0.
    pub d: usize,
    /// ABI 1.1: the labelled set's embeddings `[l, d]`, row-major `f32`, from the same backbone
    /// as `embeddings`. Null unless the heuristic asked for [`Inputs::LABELLED`] and `l >= 1`.
    pub labelled_embeddings: *const f32,
    /// ABI 1.1: class index of each labelled example `[l]`, each `< c`. Null when
    /// `labelled_embeddings` is.
    pub labelled_classes: *const u32,
    /// ABI 1.1: labelled examples L (0 at a cold start, or when not asked for).
    pub l: usize,
}

impl ProbabilitiesRaw {
    /// Probabilities `[n, c, k]` at `data`, without embeddings (every 1.1 field null or 0).
    pub const fn probabilities(data: *const f32, n: usize, c: usize, k: usize) -> Self {
        Self {
            data,
            n,
            c,
            k,
            embeddings: std::ptr::null(),
            d: 0,
            labelled_embeddings: std::ptr::null(),
            labelled_classes: std::ptr::null(),
            l: 0,
        }
    }
}

/// Host-owned buffer for an error message. The plugin writes at most `capacity` bytes of UTF-8
/// to `data` and sets `len`; it never reallocates.
#[repr(C)]
#[derive(Debug)]
pub struct ErrorBuffer {
    /// Start of the buffer.
    pub data: *mut u8,
    /// Its size in bytes.
    pub capacity: usize,
    /// Bytes written by the plugin (0 = no message).
    pub len: usize,
}

/// Scores every sample: writes `n` scores to `scores_out`.
///
/// `seed` feeds heuristics that use randomness (the same seed gives the same scores).
/// Returns a [`Status`] code; on failure the message is in `error`.
pub type ScoreFn = unsafe extern "C" fn(
    input: *const ProbabilitiesRaw,
    seed: u64,
    scores_out: *mut f32,
    error: *mut ErrorBuffer,
) -> i32;

/// Selects `query_size` samples (1 ≤ `query_size` ≤ `n`): writes their indices in selection
/// order to `indices_out` and the score each had when selected to `scores_out` (both of length
/// `query_size`). Returns a [`Status`] code; on failure the message is in `error`.
pub type SelectFn = unsafe extern "C" fn(
    input: *const ProbabilitiesRaw,
    query_size: usize,
    seed: u64,
    indices_out: *mut u32,
    scores_out: *mut f32,
    error: *mut ErrorBuffer,
) -> i32;

/// One heuristic of a plugin. Strings are NUL-terminated UTF-8 that live as long as the library.
#[repr(C)]
#[derive(Debug)]
pub struct HeuristicDescriptor {
    /// Name as used in requests, e.g. `bald`: lowercase ASCII letters, digits and `_`.
    pub name: *const c_char,
    /// Version of this heuristic's implementation, e.g. `1.0.0` (semantic versioning).
    pub version: *const c_char,
    /// One-line description, citing the paper where there is one.
    pub description: *const c_char,
    /// A [`Direction`] code.
    pub direction: u32,
    /// A [`Kind`] code.
    pub kind: u32,
    /// Set for [`Kind::Score`], null otherwise.
    pub score: Option<ScoreFn>,
    /// Set for [`Kind::Batch`], null otherwise.
    pub select: Option<SelectFn>,
}

/// What the entry symbol returns.
#[repr(C)]
#[derive(Debug)]
pub struct PluginDescriptor {
    /// [`ABI_MAJOR`] the plugin was built with.
    pub abi_major: u32,
    /// [`ABI_MINOR`] the plugin was built with.
    pub abi_minor: u32,
    /// Plugin name, NUL-terminated UTF-8.
    pub name: *const c_char,
    /// Plugin version, NUL-terminated UTF-8.
    pub version: *const c_char,
    /// First of `heuristic_count` descriptors.
    pub heuristics: *const HeuristicDescriptor,
    /// Number of heuristics.
    pub heuristic_count: usize,
    /// ABI 1.1: `heuristic_count` [`Inputs`] flag words, parallel to `heuristics` (what each
    /// heuristic asks for). Null means probabilities only for every heuristic. The host reads
    /// this field only from plugins that declare minor 1 or later.
    pub heuristic_inputs: *const Inputs,
}

// SAFETY: descriptors only point to immutable data that lives as long as the library (string
// literals, statics, functions), so sharing them between threads is sound.
unsafe impl Sync for HeuristicDescriptor {}
// SAFETY: as above.
unsafe impl Sync for PluginDescriptor {}

/// A safe, validated view of [`ProbabilitiesRaw`] for Rust plugins.
#[derive(Clone, Copy, Debug)]
pub struct Probabilities<'a> {
    data: &'a [f32],
    n: usize,
    c: usize,
    k: usize,
    embeddings: Option<Embeddings<'a>>,
    labelled: Option<Labelled<'a>>,
}

/// Row-major `f32` embeddings `[rows, D]` (ABI 1.1).
#[derive(Clone, Copy, Debug)]
pub struct Embeddings<'a> {
    data: &'a [f32],
    d: usize,
}

impl<'a> Embeddings<'a> {
    /// Wraps `data` of shape `[data.len() / d, d]`.
    ///
    /// # Errors
    /// A message if `d` is 0 or does not divide `data.len()`.
    pub fn new(data: &'a [f32], d: usize) -> Result<Self, String> {
        if d == 0 || !data.len().is_multiple_of(d) {
            return Err(format!("{} embedding values do not form rows of dimension {d}", data.len()));
        }
        Ok(Self { data, d })
    }

    /// Dimension D.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Rows (samples).
    pub fn rows(&self) -> usize {
        self.data.len() / self.d
    }

    /// Row `i`, `[D]`.
    ///
    /// # Panics
    /// If `i >= rows()`.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }

    /// All values, row-major `[rows, D]`.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
}

/// The labelled set (ABI 1.1): embeddings `[L, D]` and class indices `[L]`.
#[derive(Clone, Copy, Debug)]
pub struct Labelled<'a> {
    embeddings: Embeddings<'a>,
    classes: &'a [u32],
}

impl<'a> Labelled<'a> {
    /// Labelled examples L (may be 0).
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether the set is empty (a cold start).
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Their embeddings `[L, D]`.
    pub fn embeddings(&self) -> Embeddings<'a> {
        self.embeddings
    }

    /// Their class indices `[L]`, each `< C`.
    pub fn classes(&self) -> &'a [u32] {
        self.classes
    }
}

impl<'a> Probabilities<'a> {
    /// Wraps `data` of shape `[n, c, k]`, without embeddings.
    ///
    /// # Errors
    /// A message if `data.len() != n * c * k` or a dimension is 0.
    pub fn new(data: &'a [f32], n: usize, c: usize, k: usize) -> Result<Self, String> {
        let expected = n.checked_mul(c).and_then(|nc| nc.checked_mul(k));
        if n == 0 || c == 0 || k == 0 || expected != Some(data.len()) {
            return Err(format!("shape [{n}, {c}, {k}] does not match {} values", data.len()));
        }
        Ok(Self { data, n, c, k, embeddings: None, labelled: None })
    }

    /// Adds the pool's embeddings `[n, d]`.
    ///
    /// # Errors
    /// A message if `embeddings` is not `n` rows of `d >= 1` values.
    pub fn with_embeddings(mut self, embeddings: &'a [f32], d: usize) -> Result<Self, String> {
        let embeddings = Embeddings::new(embeddings, d)?;
        if embeddings.rows() != self.n {
            return Err(format!("{} embeddings for {} samples", embeddings.rows(), self.n));
        }
        self.embeddings = Some(embeddings);
        Ok(self)
    }

    /// Adds the labelled set: embeddings `[L, D]` (D of the pool's embeddings, which must be set
    /// first) and classes `[L]`.
    ///
    /// # Errors
    /// A message if the pool has no embeddings, the shapes disagree or a class is `>= c`.
    pub fn with_labelled(mut self, embeddings: &'a [f32], classes: &'a [u32]) -> Result<Self, String> {
        let d = self.embeddings.ok_or("labelled embeddings without pool embeddings")?.d;
        let embeddings = Embeddings::new(embeddings, d)?;
        if embeddings.rows() != classes.len() {
            return Err(format!("{} labelled embeddings for {} classes", embeddings.rows(), classes.len()));
        }
        if let Some(class) = classes.iter().find(|&&class| class as usize >= self.c) {
            return Err(format!("labelled class {class} is not below C = {}", self.c));
        }
        self.labelled = Some(Labelled { embeddings, classes });
        Ok(self)
    }

    /// Samples N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Classes C.
    pub fn c(&self) -> usize {
        self.c
    }

    /// MC iterations K.
    pub fn k(&self) -> usize {
        self.k
    }

    /// All values, row-major `[N, C, K]`.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Sample `i` as a row-major `[C, K]` slice.
    ///
    /// # Panics
    /// If `i >= n`.
    pub fn sample(&self, i: usize) -> &'a [f32] {
        let len = self.c * self.k;
        &self.data[i * len..(i + 1) * len]
    }

    /// The pool's embeddings `[N, D]`, if the heuristic asked for [`Inputs::EMBEDDINGS`].
    pub fn embeddings(&self) -> Option<Embeddings<'a>> {
        self.embeddings
    }

    /// The labelled set, present whenever embeddings are: empty at a cold start, and for
    /// heuristics that did not ask for [`Inputs::LABELLED`].
    pub fn labelled(&self) -> Option<Labelled<'a>> {
        self.labelled
    }

    /// The pool's embeddings, or an [`HeuristicError::InvalidInput`] naming what is missing.
    ///
    /// # Errors
    /// When the host supplied none.
    pub fn require_embeddings(&self) -> Result<Embeddings<'a>, HeuristicError> {
        self.embeddings.ok_or_else(|| HeuristicError::InvalidInput("the pool's embeddings are required".into()))
    }

    /// The labelled set (empty at a cold start), or an [`HeuristicError::InvalidInput`] naming
    /// what is missing.
    ///
    /// # Errors
    /// When the host supplied no embeddings: the labelled set is present, possibly empty,
    /// whenever the pool's embeddings are (an inconsistent labelled set is rejected before the
    /// heuristic runs).
    pub fn require_labelled(&self) -> Result<Labelled<'a>, HeuristicError> {
        self.labelled.ok_or_else(|| HeuristicError::InvalidInput("the labelled set's embeddings are required".into()))
    }
}

/// Failure of a Rust heuristic, turned into a [`Status`] and a message at the boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeuristicError {
    /// See [`Status::InvalidInput`].
    InvalidInput(String),
    /// See [`Status::Internal`].
    Internal(String),
}

/// Metadata of a Rust heuristic, read by [`HeuristicDescriptor::for_score`] and
/// [`HeuristicDescriptor::for_batch`].
pub trait Heuristic {
    /// See [`HeuristicDescriptor::name`].
    const NAME: &'static CStr;
    /// See [`HeuristicDescriptor::version`].
    const VERSION: &'static CStr;
    /// See [`HeuristicDescriptor::description`].
    const DESCRIPTION: &'static CStr;
    /// See [`HeuristicDescriptor::direction`].
    const DIRECTION: Direction;
    /// What the heuristic asks for besides probabilities (ABI 1.1; exported by
    /// [`export_plugin!`] in [`PluginDescriptor::heuristic_inputs`]).
    const INPUTS: Inputs = Inputs::PROBABILITIES;
}

/// A per-sample heuristic written in safe Rust.
pub trait ScoreHeuristic: Heuristic {
    /// Writes one score per sample to `scores` (length `input.n()`).
    ///
    /// # Errors
    /// [`HeuristicError`] with a message for the host.
    fn score(input: Probabilities<'_>, seed: u64, scores: &mut [f32]) -> Result<(), HeuristicError>;
}

/// A batch-selection heuristic written in safe Rust.
pub trait BatchHeuristic: Heuristic {
    /// Picks `indices.len()` samples (1 ≤ len ≤ `input.n()`): writes their indices in selection
    /// order to `indices` and the score each had when picked to `scores` (same length).
    ///
    /// # Errors
    /// [`HeuristicError`] with a message for the host.
    fn select(
        input: Probabilities<'_>,
        seed: u64,
        indices: &mut [u32],
        scores: &mut [f32],
    ) -> Result<(), HeuristicError>;
}

impl HeuristicDescriptor {
    /// The descriptor of a [`ScoreHeuristic`], with a panic-catching trampoline.
    pub const fn for_score<H: ScoreHeuristic>() -> Self {
        Self {
            name: H::NAME.as_ptr(),
            version: H::VERSION.as_ptr(),
            description: H::DESCRIPTION.as_ptr(),
            direction: H::DIRECTION as u32,
            kind: Kind::Score as u32,
            score: Some(score_trampoline::<H>),
            select: None,
        }
    }

    /// The descriptor of a [`BatchHeuristic`], with a panic-catching trampoline.
    pub const fn for_batch<H: BatchHeuristic>() -> Self {
        Self {
            name: H::NAME.as_ptr(),
            version: H::VERSION.as_ptr(),
            description: H::DESCRIPTION.as_ptr(),
            direction: H::DIRECTION as u32,
            kind: Kind::Batch as u32,
            score: None,
            select: Some(select_trampoline::<H>),
        }
    }
}

/// Builds the safe input view from a raw pointer; [`HeuristicError::InvalidInput`] if it is null
/// or inconsistent (among others: `l > 0` with a null labelled array).
///
/// # Safety
/// `input` is null or points to a valid [`ProbabilitiesRaw`] whose `data` holds `n * c * k`
/// readable `f32`s for the duration of the call.
unsafe fn view<'a>(input: *const ProbabilitiesRaw) -> Result<Probabilities<'a>, HeuristicError> {
    // SAFETY: the caller guarantees `input` is null or valid.
    let Some(raw) = (unsafe { input.as_ref() }) else {
        return Err(HeuristicError::InvalidInput("null input".into()));
    };
    let len = raw.n.checked_mul(raw.c).and_then(|nc| nc.checked_mul(raw.k));
    let view = match len {
        Some(len) if !raw.data.is_null() && len > 0 => {
            // SAFETY: the caller guarantees `len` readable values at `data`.
            let data = unsafe { std::slice::from_raw_parts(raw.data, len) };
            Probabilities::new(data, raw.n, raw.c, raw.k).map_err(HeuristicError::InvalidInput)?
        }
        _ => {
            return Err(HeuristicError::InvalidInput(format!("empty or null input [{}, {}, {}]", raw.n, raw.c, raw.k)));
        }
    };
    if raw.embeddings.is_null() {
        return Ok(view);
    }
    let invalid = |what: &str| {
        HeuristicError::InvalidInput(format!("inconsistent {what}: n {}, d {}, l {}", raw.n, raw.d, raw.l))
    };
    let pool_len = raw.n.checked_mul(raw.d).filter(|&len| len > 0).ok_or_else(|| invalid("embeddings"))?;
    // SAFETY: the caller guarantees `n * d` readable values at `embeddings` when it is set.
    let embeddings = unsafe { std::slice::from_raw_parts(raw.embeddings, pool_len) };
    let view = view.with_embeddings(embeddings, raw.d).map_err(HeuristicError::InvalidInput)?;
    if raw.l == 0 {
        return view.with_labelled(&[], &[]).map_err(HeuristicError::InvalidInput);
    }
    // `l > 0` promises that many examples: a null array is a host bug, not a cold start.
    if raw.labelled_embeddings.is_null() || raw.labelled_classes.is_null() {
        return Err(invalid("labelled set (l > 0 with a null array)"));
    }
    let labelled_len = raw.l.checked_mul(raw.d).ok_or_else(|| invalid("labelled embeddings"))?;
    // SAFETY: the caller guarantees `l * d` readable values and `l` classes when they are set.
    let (labelled, classes) = unsafe {
        (
            std::slice::from_raw_parts(raw.labelled_embeddings, labelled_len),
            std::slice::from_raw_parts(raw.labelled_classes, raw.l),
        )
    };
    view.with_labelled(labelled, classes).map_err(HeuristicError::InvalidInput)
}

/// Runs `body`, catching panics, and turns the outcome into a status code and error message.
///
/// # Safety
/// `error` is null or points to a valid [`ErrorBuffer`].
unsafe fn guarded(error: *mut ErrorBuffer, body: impl FnOnce() -> Result<(), HeuristicError>) -> i32 {
    let (status, message) = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return Status::Ok as i32,
        Ok(Err(HeuristicError::InvalidInput(message))) => (Status::InvalidInput, message),
        Ok(Err(HeuristicError::Internal(message))) => (Status::Internal, message),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            (Status::Panic, format!("panicked: {what}"))
        }
    };
    // SAFETY: the caller guarantees `error` is null or valid.
    if let Some(buffer) = unsafe { error.as_mut() } {
        // SAFETY: a valid ErrorBuffer has `capacity` writable bytes at `data`.
        unsafe { write_message(buffer, &message) };
    }
    status as i32
}

/// Copies `message` into `buffer`, truncated to its capacity at a UTF-8 character boundary.
///
/// # Safety
/// `buffer.data` is null or has `buffer.capacity` writable bytes.
pub unsafe fn write_message(buffer: &mut ErrorBuffer, message: &str) {
    if buffer.data.is_null() {
        buffer.len = 0;
        return;
    }
    let mut len = message.len().min(buffer.capacity);
    while !message.is_char_boundary(len) {
        len -= 1;
    }
    // SAFETY: `len <= capacity` and the caller guarantees `capacity` writable bytes.
    unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), buffer.data, len) };
    buffer.len = len;
}

/// The `extern "C"` [`ScoreFn`] of a [`ScoreHeuristic`].
///
/// # Safety
/// The host passes a valid input (see [`ProbabilitiesRaw`]; checked before use), `n` writable `f32`s at `scores_out` and a null
/// or valid `error`.
pub unsafe extern "C" fn score_trampoline<H: ScoreHeuristic>(
    input: *const ProbabilitiesRaw,
    seed: u64,
    scores_out: *mut f32,
    error: *mut ErrorBuffer,
) -> i32 {
    let body = || {
        // SAFETY: forwarded from this function's contract.
        let input = unsafe { view(input) }?;
        if scores_out.is_null() {
            return Err(HeuristicError::InvalidInput("null scores buffer".into()));
        }
        // SAFETY: the host provides `n` writable scores.
        let scores = unsafe { std::slice::from_raw_parts_mut(scores_out, input.n()) };
        H::score(input, seed, scores)
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { guarded(error, body) }
}

/// The `extern "C"` [`SelectFn`] of a [`BatchHeuristic`].
///
/// # Safety
/// The host passes a valid input (see [`ProbabilitiesRaw`]; checked before use), `query_size` writable values at both outputs
/// and a null or valid `error`.
pub unsafe extern "C" fn select_trampoline<H: BatchHeuristic>(
    input: *const ProbabilitiesRaw,
    query_size: usize,
    seed: u64,
    indices_out: *mut u32,
    scores_out: *mut f32,
    error: *mut ErrorBuffer,
) -> i32 {
    let body = || {
        // SAFETY: forwarded from this function's contract.
        let input = unsafe { view(input) }?;
        if query_size == 0 || query_size > input.n() {
            return Err(HeuristicError::InvalidInput(format!("query_size {query_size} is not in 1..={}", input.n())));
        }
        if indices_out.is_null() || scores_out.is_null() {
            return Err(HeuristicError::InvalidInput("null output buffer".into()));
        }
        // SAFETY: the host provides `query_size` writable values in each output.
        let indices = unsafe { std::slice::from_raw_parts_mut(indices_out, query_size) };
        // SAFETY: as above.
        let scores = unsafe { std::slice::from_raw_parts_mut(scores_out, query_size) };
        H::select(input, seed, indices, scores)
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { guarded(error, body) }
}

/// Exports a plugin: defines the static [`PluginDescriptor`] and the [`ENTRY_SYMBOL`] function.
/// Use it once per shared library (`crate-type = ["cdylib"]`).
///
/// List each heuristic as `score Type` ([`ScoreHeuristic`]) or `batch Type`
/// ([`BatchHeuristic`]); each one's [`Heuristic::INPUTS`] goes into
/// [`PluginDescriptor::heuristic_inputs`]. `Type` is a path that starts with an identifier
/// (`Bald`, `my_module::Bald`, `crate::Bald`, `Bald<u8>`), not with `::`: `score ::a::B` reads
/// as the 1.0 expression `score::a::B`.
///
/// The ABI 1.0 form, a list of `const` expressions of type [`HeuristicDescriptor`]
/// (`HeuristicDescriptor::for_score::<Type>()`, a `const fn` call `descriptor()`, a constant),
/// still compiles; its heuristics get probabilities only. The 1.0 form is matched first: a
/// `kind Type` pair is never a single expression, so it falls through to the new form, while an
/// expression such as `descriptor()` would also read as the pair `descriptor ()` (`()` is a
/// type).
///
/// ```
/// use std::ffi::CStr;
/// use alps_heuristic_abi::{Direction, Heuristic, HeuristicError, Inputs, Probabilities, ScoreHeuristic};
///
/// /// Scores every sample 1 - max probability of its first MC iteration.
/// struct FirstPassUncertainty;
///
/// impl Heuristic for FirstPassUncertainty {
///     const NAME: &'static CStr = c"first_pass_uncertainty";
///     const VERSION: &'static CStr = c"0.1.0";
///     const DESCRIPTION: &'static CStr = c"1 - max probability of the first MC iteration";
///     const DIRECTION: Direction = Direction::HigherIsMoreInformative;
/// }
///
/// impl ScoreHeuristic for FirstPassUncertainty {
///     fn score(input: Probabilities<'_>, _seed: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
///         for (i, score) in scores.iter_mut().enumerate() {
///             let first_pass = input.sample(i).iter().step_by(input.k());
///             *score = 1.0 - first_pass.fold(0.0f32, |a, &b| a.max(b));
///         }
///         Ok(())
///     }
/// }
///
/// /// Scores every sample by its embedding's squared norm (asks for the pool's embeddings).
/// struct EmbeddingNorm;
///
/// impl Heuristic for EmbeddingNorm {
///     const NAME: &'static CStr = c"embedding_norm";
///     const VERSION: &'static CStr = c"0.1.0";
///     const DESCRIPTION: &'static CStr = c"Squared norm of the backbone embedding";
///     const DIRECTION: Direction = Direction::HigherIsMoreInformative;
///     const INPUTS: Inputs = Inputs::EMBEDDINGS;
/// }
///
/// impl ScoreHeuristic for EmbeddingNorm {
///     fn score(input: Probabilities<'_>, _seed: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
///         let embeddings = input.require_embeddings()?;
///         for (i, score) in scores.iter_mut().enumerate() {
///             *score = embeddings.row(i).iter().map(|x| x * x).sum();
///         }
///         Ok(())
///     }
/// }
///
/// alps_heuristic_abi::export_plugin! {
///     name: c"my-heuristics",
///     version: c"0.1.0",
///     heuristics: [score FirstPassUncertainty, score EmbeddingNorm],
/// }
/// # fn main() {
/// #     // SAFETY: the entry symbol returns a pointer to a static descriptor.
/// #     let plugin = unsafe { &*alps_heuristic_plugin() };
/// #     assert_eq!(plugin.heuristic_count, 2);
/// #     // SAFETY: `heuristic_inputs` holds `heuristic_count` flag words.
/// #     let inputs = unsafe { std::slice::from_raw_parts(plugin.heuristic_inputs, 2) };
/// #     assert_eq!(inputs, [Inputs::PROBABILITIES, Inputs::EMBEDDINGS]);
/// # }
/// ```
///
/// The 1.0 form with `const fn` calls only (each element alone also reads as a `kind Type`
/// pair, `descriptor ()`):
///
/// ```
/// use std::ffi::CStr;
/// use alps_heuristic_abi::{
///     Direction, Heuristic, HeuristicDescriptor, HeuristicError, Probabilities, ScoreHeuristic,
/// };
///
/// struct Constant;
///
/// impl Heuristic for Constant {
///     const NAME: &'static CStr = c"constant";
///     const VERSION: &'static CStr = c"0.1.0";
///     const DESCRIPTION: &'static CStr = c"Scores every sample 1";
///     const DIRECTION: Direction = Direction::HigherIsMoreInformative;
/// }
///
/// impl ScoreHeuristic for Constant {
///     fn score(_: Probabilities<'_>, _: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
///         scores.fill(1.0);
///         Ok(())
///     }
/// }
///
/// const fn descriptor() -> HeuristicDescriptor {
///     HeuristicDescriptor::for_score::<Constant>()
/// }
///
/// const fn another() -> HeuristicDescriptor {
///     HeuristicDescriptor::for_score::<Constant>()
/// }
///
/// alps_heuristic_abi::export_plugin! {
///     name: c"my-heuristics",
///     version: c"0.1.0",
///     heuristics: [descriptor(), another()],
/// }
/// # fn main() {
/// #     // SAFETY: the entry symbol returns a pointer to a static descriptor.
/// #     let plugin = unsafe { &*alps_heuristic_plugin() };
/// #     assert_eq!(plugin.heuristic_count, 2);
/// #     assert!(plugin.heuristic_inputs.is_null(), "1.0 form: probabilities only");
/// # }
/// ```
///
/// The 1.0 form with descriptor paths and a constant:
///
/// ```
/// # use std::ffi::CStr;
/// # use alps_heuristic_abi::{
/// #     Direction, Heuristic, HeuristicDescriptor, HeuristicError, Probabilities, ScoreHeuristic,
/// # };
/// # struct Constant;
/// # impl Heuristic for Constant {
/// #     const NAME: &'static CStr = c"constant";
/// #     const VERSION: &'static CStr = c"0.1.0";
/// #     const DESCRIPTION: &'static CStr = c"Scores every sample 1";
/// #     const DIRECTION: Direction = Direction::HigherIsMoreInformative;
/// # }
/// # impl ScoreHeuristic for Constant {
/// #     fn score(_: Probabilities<'_>, _: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
/// #         scores.fill(1.0);
/// #         Ok(())
/// #     }
/// # }
/// const DESCRIPTOR: HeuristicDescriptor = HeuristicDescriptor::for_score::<Constant>();
///
/// alps_heuristic_abi::export_plugin! {
///     name: c"my-heuristics",
///     version: c"0.1.0",
///     heuristics: [HeuristicDescriptor::for_score::<Constant>(), DESCRIPTOR],
/// }
/// # fn main() {
/// #     // SAFETY: the entry symbol returns a pointer to a static descriptor.
/// #     assert_eq!(unsafe { &*alps_heuristic_plugin() }.heuristic_count, 2);
/// # }
/// ```
///
/// The new form with batch heuristics, module paths and a generic type:
///
/// ```
/// use std::{ffi::CStr, marker::PhantomData};
/// use alps_heuristic_abi::{BatchHeuristic, Direction, Heuristic, HeuristicError, Inputs, Probabilities};
///
/// mod first {
///     use super::*;
///
///     /// Picks the first `query_size` samples, for any marker type `T`.
///     pub struct First<T>(PhantomData<T>);
///
///     impl<T> Heuristic for First<T> {
///         const NAME: &'static CStr = c"first";
///         const VERSION: &'static CStr = c"0.1.0";
///         const DESCRIPTION: &'static CStr = c"The first samples";
///         const DIRECTION: Direction = Direction::HigherIsMoreInformative;
///         const INPUTS: Inputs = Inputs::LABELLED;
///     }
///
///     impl<T> BatchHeuristic for First<T> {
///         fn select(
///             _: Probabilities<'_>,
///             _: u64,
///             indices: &mut [u32],
///             scores: &mut [f32],
///         ) -> Result<(), HeuristicError> {
///             indices.iter_mut().enumerate().for_each(|(i, index)| *index = i as u32);
///             scores.fill(1.0);
///             Ok(())
///         }
///     }
///
///     pub type Plain = First<()>;
/// }
///
/// alps_heuristic_abi::export_plugin! {
///     name: c"my-heuristics",
///     version: c"0.1.0",
///     heuristics: [batch first::First<u8>, batch crate::first::Plain,],
/// }
/// # fn main() {
/// #     // SAFETY: the entry symbol returns a pointer to a static descriptor.
/// #     let plugin = unsafe { &*alps_heuristic_plugin() };
/// #     // SAFETY: `heuristic_inputs` holds `heuristic_count` flag words.
/// #     let inputs = unsafe { std::slice::from_raw_parts(plugin.heuristic_inputs, plugin.heuristic_count) };
/// #     assert_eq!(inputs, [Inputs::LABELLED, Inputs::LABELLED]);
/// # }
/// ```
#[macro_export]
macro_rules! export_plugin {
    // The 1.0 form comes first: see above for why the order matters.
    (name: $name:expr, version: $version:expr, heuristics: [$($heuristic:expr),* $(,)?] $(,)?) => {
        static ALPS_HEURISTICS: &[$crate::HeuristicDescriptor] = &[$($heuristic),*];
        $crate::export_plugin!(@entry $name, $version, ALPS_HEURISTICS, ::std::ptr::null());
    };
    (name: $name:expr, version: $version:expr, heuristics: [$($kind:ident $heuristic:ty),* $(,)?] $(,)?) => {
        static ALPS_HEURISTICS: &[$crate::HeuristicDescriptor] =
            &[$($crate::export_plugin!(@descriptor $kind $heuristic)),*];
        static ALPS_INPUTS: &[$crate::Inputs] = &[$(<$heuristic as $crate::Heuristic>::INPUTS),*];
        $crate::export_plugin!(@entry $name, $version, ALPS_HEURISTICS, ALPS_INPUTS.as_ptr());
    };
    (@descriptor score $heuristic:ty) => { $crate::HeuristicDescriptor::for_score::<$heuristic>() };
    (@descriptor batch $heuristic:ty) => { $crate::HeuristicDescriptor::for_batch::<$heuristic>() };
    (@descriptor $kind:ident $heuristic:ty) => {
        ::std::compile_error!(::std::concat!("unknown heuristic kind `", ::std::stringify!($kind), "`: write `score Type` or `batch Type`"))
    };
    (@entry $name:expr, $version:expr, $heuristics:ident, $inputs:expr) => {
        static ALPS_PLUGIN: $crate::PluginDescriptor = $crate::PluginDescriptor {
            abi_major: $crate::ABI_MAJOR,
            abi_minor: $crate::ABI_MINOR,
            name: ::std::ffi::CStr::as_ptr($name),
            version: ::std::ffi::CStr::as_ptr($version),
            heuristics: $heuristics.as_ptr(),
            heuristic_count: $heuristics.len(),
            heuristic_inputs: $inputs,
        };

        /// Entry symbol of this ALPS heuristic plugin (see `alps_heuristic_abi::ENTRY_SYMBOL`).
        #[unsafe(no_mangle)]
        pub extern "C" fn alps_heuristic_plugin() -> *const $crate::PluginDescriptor {
            &ALPS_PLUGIN
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum;
    impl Heuristic for Sum {
        const NAME: &'static CStr = c"sum";
        const VERSION: &'static CStr = c"1.0.0";
        const DESCRIPTION: &'static CStr = c"test: sum of the sample's values";
        const DIRECTION: Direction = Direction::HigherIsMoreInformative;
    }
    impl ScoreHeuristic for Sum {
        fn score(input: Probabilities<'_>, seed: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
            match seed {
                1 => panic!("boom at seed {seed}"),
                2 => Err(HeuristicError::InvalidInput("ünïcode message".into())),
                _ => {
                    for (i, score) in scores.iter_mut().enumerate() {
                        *score = input.sample(i).iter().sum();
                    }
                    Ok(())
                }
            }
        }
    }
    impl BatchHeuristic for Sum {
        fn select(_: Probabilities<'_>, _: u64, indices: &mut [u32], scores: &mut [f32]) -> Result<(), HeuristicError> {
            indices.iter_mut().enumerate().for_each(|(i, index)| *index = i as u32);
            scores.fill(0.5);
            Ok(())
        }
    }

    const DATA: [f32; 8] = [0.5, 0.5, 0.5, 0.5, 0.25, 0.75, 0.75, 0.25];
    fn raw() -> ProbabilitiesRaw {
        ProbabilitiesRaw::probabilities(DATA.as_ptr(), 2, 2, 2)
    }

    fn call_score(seed: u64, capacity: usize) -> (i32, Vec<f32>, String) {
        let descriptor = HeuristicDescriptor::for_score::<Sum>();
        let mut scores = vec![0.0f32; 2];
        let mut message = vec![0u8; capacity];
        let mut error = ErrorBuffer { data: message.as_mut_ptr(), capacity, len: 0 };
        let score = descriptor.score.unwrap();
        // SAFETY: valid input, 2 writable scores, valid error buffer.
        let status = unsafe { score(&raw(), seed, scores.as_mut_ptr(), &mut error) };
        let text = String::from_utf8(message[..error.len].to_vec()).expect("valid UTF-8 even when truncated");
        (status, scores, text)
    }

    #[test]
    fn score_trampoline_fills_the_host_buffer() {
        let (status, scores, message) = call_score(0, 64);
        assert_eq!(Status::from_code(status), Some(Status::Ok));
        assert_eq!(scores, [2.0, 2.0]);
        assert!(message.is_empty());
    }

    #[test]
    fn a_panic_becomes_a_status_with_its_message() {
        let (status, _, message) = call_score(1, 256);
        assert_eq!(Status::from_code(status), Some(Status::Panic));
        assert_eq!(message, "panicked: boom at seed 1");
    }

    #[test]
    fn error_messages_are_truncated_at_a_character_boundary() {
        // "ünïcode message": 'ü' is 2 bytes, so a 3-byte buffer holds "ün" minus the half 'ï'.
        let (status, _, message) = call_score(2, 4);
        assert_eq!(Status::from_code(status), Some(Status::InvalidInput));
        assert_eq!(message, "ün");
    }

    #[test]
    fn select_trampoline_rejects_a_query_size_outside_the_pool() {
        let descriptor = HeuristicDescriptor::for_batch::<Sum>();
        let select = descriptor.select.unwrap();
        let (mut indices, mut scores) = (vec![0u32; 3], vec![0f32; 3]);
        let mut message = vec![0u8; 128];
        let mut error = ErrorBuffer { data: message.as_mut_ptr(), capacity: 128, len: 0 };
        for query_size in [0, 3] {
            // SAFETY: valid input and buffers of 3 >= query_size values.
            let status =
                unsafe { select(&raw(), query_size, 0, indices.as_mut_ptr(), scores.as_mut_ptr(), &mut error) };
            assert_eq!(Status::from_code(status), Some(Status::InvalidInput));
            assert!(std::str::from_utf8(&message[..error.len]).unwrap().contains("query_size"));
        }
        // SAFETY: as above.
        let status = unsafe { select(&raw(), 2, 0, indices.as_mut_ptr(), scores.as_mut_ptr(), &mut error) };
        assert_eq!(status, Status::Ok as i32);
        assert_eq!(&indices[..2], [0, 1]);
    }

    #[test]
    fn null_and_inconsistent_inputs_are_rejected_not_dereferenced() {
        let descriptor = HeuristicDescriptor::for_score::<Sum>();
        let score = descriptor.score.unwrap();
        let mut scores = [0f32; 2];
        // SAFETY: null pointers are part of the contract and must be handled.
        let status = unsafe { score(std::ptr::null(), 0, scores.as_mut_ptr(), std::ptr::null_mut()) };
        assert_eq!(status, Status::InvalidInput as i32);
        let empty = ProbabilitiesRaw::probabilities(DATA.as_ptr(), 0, 2, 2);
        // SAFETY: as above.
        let status = unsafe { score(&empty, 0, scores.as_mut_ptr(), std::ptr::null_mut()) };
        assert_eq!(status, Status::InvalidInput as i32);
    }

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        assert_eq!(Status::from_code(3), Some(Status::Panic));
        assert_eq!(Status::from_code(42), None);
        assert_eq!(Direction::from_code(2), Some(Direction::LowerIsMoreInformative));
        assert_eq!(Direction::from_code(0), None);
        assert_eq!(Kind::from_code(2), Some(Kind::Batch));
        assert_eq!(Kind::from_code(9), None);
    }

    struct NearestLabelled;
    impl Heuristic for NearestLabelled {
        const NAME: &'static CStr = c"nearest_labelled";
        const VERSION: &'static CStr = c"1.0.0";
        const DESCRIPTION: &'static CStr = c"test: class of the nearest labelled embedding";
        const DIRECTION: Direction = Direction::HigherIsMoreInformative;
        const INPUTS: Inputs = Inputs::LABELLED;
    }
    impl ScoreHeuristic for NearestLabelled {
        fn score(input: Probabilities<'_>, _: u64, scores: &mut [f32]) -> Result<(), HeuristicError> {
            let (pool, labelled) = (input.require_embeddings()?, input.require_labelled()?);
            for (i, score) in scores.iter_mut().enumerate() {
                let distance = |j: usize| -> f32 {
                    pool.row(i).iter().zip(labelled.embeddings().row(j)).map(|(a, b)| (a - b) * (a - b)).sum()
                };
                let nearest = (0..labelled.len()).min_by(|&a, &b| distance(a).total_cmp(&distance(b)));
                *score = nearest.map_or(-1.0, |j| labelled.classes()[j] as f32);
            }
            Ok(())
        }
    }

    #[test]
    fn the_trampoline_hands_embeddings_and_the_labelled_set_to_the_heuristic() {
        let descriptor = HeuristicDescriptor::for_score::<NearestLabelled>();
        let score = descriptor.score.unwrap();
        let (pool, labelled, classes) = ([0.0f32, 0.0, 10.0, 10.0], [9.0f32, 9.0, 1.0, 1.0], [1u32, 0]);
        let mut raw = raw();
        (raw.embeddings, raw.d) = (pool.as_ptr(), 2);
        let mut scores = [0f32; 2];
        // SAFETY: the input points at live arrays of the declared shapes.
        let status = unsafe { score(&raw, 0, scores.as_mut_ptr(), std::ptr::null_mut()) };
        assert_eq!(status, Status::Ok as i32);
        assert_eq!(scores, [-1.0, -1.0], "no labelled set: an empty one");
        (raw.labelled_embeddings, raw.labelled_classes, raw.l) = (labelled.as_ptr(), classes.as_ptr(), 2);
        // SAFETY: as above.
        let status = unsafe { score(&raw, 0, scores.as_mut_ptr(), std::ptr::null_mut()) };
        assert_eq!(status, Status::Ok as i32);
        assert_eq!(scores, [0.0, 1.0], "sample 0 nearest (1, 1) of class 0, sample 1 nearest (9, 9) of class 1");
        let bad_classes = [1u32, 2];
        raw.labelled_classes = bad_classes.as_ptr();
        // SAFETY: as above.
        let status = unsafe { score(&raw, 0, scores.as_mut_ptr(), std::ptr::null_mut()) };
        assert_eq!(status, Status::InvalidInput as i32, "class 2 is not below C = 2");
        // SAFETY: a plain probabilities input; the heuristic reports what it misses.
        let status = unsafe { score(&super::tests::raw(), 0, scores.as_mut_ptr(), std::ptr::null_mut()) };
        assert_eq!(status, Status::InvalidInput as i32);
    }

    #[test]
    fn a_labelled_count_with_a_null_array_is_invalid_input_not_an_empty_set() {
        let descriptor = HeuristicDescriptor::for_score::<NearestLabelled>();
        let score = descriptor.score.unwrap();
        let (pool, labelled, classes) = ([0.0f32, 0.0, 10.0, 10.0], [9.0f32, 9.0], [1u32]);
        let mut scores = [0f32; 2];
        let mut message = vec![0u8; 128];
        let nulls: [(*const f32, *const u32); 3] = [
            (std::ptr::null(), classes.as_ptr()),
            (labelled.as_ptr(), std::ptr::null()),
            (std::ptr::null(), std::ptr::null()),
        ];
        for (embeddings, classes) in nulls {
            let mut raw = raw();
            (raw.embeddings, raw.d) = (pool.as_ptr(), 2);
            (raw.labelled_embeddings, raw.labelled_classes, raw.l) = (embeddings, classes, 1);
            let mut error = ErrorBuffer { data: message.as_mut_ptr(), capacity: message.len(), len: 0 };
            // SAFETY: every non-null pointer points at a live array of the declared shape.
            let status = unsafe { score(&raw, 0, scores.as_mut_ptr(), &mut error) };
            assert_eq!(status, Status::InvalidInput as i32);
            assert!(std::str::from_utf8(&message[..error.len]).unwrap().contains("labelled set"));
        }
        // l = 0 with null arrays is a cold start: an empty set.
        let mut raw = raw();
        (raw.embeddings, raw.d) = (pool.as_ptr(), 2);
        // SAFETY: as above.
        let status = unsafe { score(&raw, 0, scores.as_mut_ptr(), std::ptr::null_mut()) };
        assert_eq!(status, Status::Ok as i32);
    }

    #[test]
    fn probabilities_view_checks_the_shape() {
        assert!(Probabilities::new(&DATA, 2, 2, 2).is_ok());
        assert!(Probabilities::new(&DATA, 3, 2, 2).is_err());
        assert!(Probabilities::new(&[], 0, 2, 2).is_err());
        let view = Probabilities::new(&DATA, 2, 2, 2).unwrap();
        assert_eq!(view.sample(1), &DATA[4..]);
    }
}
