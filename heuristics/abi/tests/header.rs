//! The C header `include/alps_heuristic.h` and the Rust definitions describe the same ABI:
//! compile a C program against the header that prints every size and offset, and compare.

use std::{mem::offset_of, path::Path, process::Command};

use alps_heuristic_abi::{
    ABI_MAJOR, ABI_MINOR, Direction, ErrorBuffer, HeuristicDescriptor, Inputs, Kind, PluginDescriptor,
    ProbabilitiesRaw, Status,
};

const PROGRAM: &str = r#"
#include <stdio.h>
#include "alps_heuristic.h"
#define F(T, f) printf(#T "." #f " %zu\n", offsetof(T, f))
int main(void) {
    printf("abi %u.%u\n", ALPS_ABI_MAJOR, ALPS_ABI_MINOR);
    printf("entry %s\n", ALPS_ENTRY_SYMBOL);
    printf("status %d %d %d %d\n", ALPS_STATUS_OK, ALPS_STATUS_INVALID_INPUT, ALPS_STATUS_INTERNAL, ALPS_STATUS_PANIC);
    printf("direction %u %u\n", ALPS_DIRECTION_HIGHER_IS_MORE_INFORMATIVE, ALPS_DIRECTION_LOWER_IS_MORE_INFORMATIVE);
    printf("kind %u %u\n", ALPS_KIND_SCORE, ALPS_KIND_BATCH);
    printf("inputs %u %u %u\n", ALPS_INPUT_PROBABILITIES, ALPS_INPUT_EMBEDDINGS, ALPS_INPUT_LABELLED);
    printf("sizeof.AlpsProbabilities %zu\n", sizeof(AlpsProbabilities));
    F(AlpsProbabilities, data); F(AlpsProbabilities, n); F(AlpsProbabilities, c); F(AlpsProbabilities, k);
    F(AlpsProbabilities, embeddings); F(AlpsProbabilities, d); F(AlpsProbabilities, labelled_embeddings);
    F(AlpsProbabilities, labelled_classes); F(AlpsProbabilities, l);
    printf("sizeof.AlpsErrorBuffer %zu\n", sizeof(AlpsErrorBuffer));
    F(AlpsErrorBuffer, data); F(AlpsErrorBuffer, capacity); F(AlpsErrorBuffer, len);
    printf("sizeof.AlpsHeuristicDescriptor %zu\n", sizeof(AlpsHeuristicDescriptor));
    F(AlpsHeuristicDescriptor, name); F(AlpsHeuristicDescriptor, version); F(AlpsHeuristicDescriptor, description);
    F(AlpsHeuristicDescriptor, direction); F(AlpsHeuristicDescriptor, kind);
    F(AlpsHeuristicDescriptor, score); F(AlpsHeuristicDescriptor, select);
    printf("sizeof.AlpsPluginDescriptor %zu\n", sizeof(AlpsPluginDescriptor));
    F(AlpsPluginDescriptor, abi_major); F(AlpsPluginDescriptor, abi_minor); F(AlpsPluginDescriptor, name);
    F(AlpsPluginDescriptor, version); F(AlpsPluginDescriptor, heuristics); F(AlpsPluginDescriptor, heuristic_count);
    F(AlpsPluginDescriptor, heuristic_inputs);
    return 0;
}
"#;

fn c_layout() -> String {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("layout.c");
    let binary = dir.path().join("layout");
    std::fs::write(&source, PROGRAM).unwrap();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(&include)
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .status()
        .unwrap_or_else(|error| panic!("cannot run the C compiler {cc:?}: {error}"));
    assert!(status.success(), "the header does not compile");
    let output = Command::new(&binary).output().unwrap();
    String::from_utf8(output.stdout).unwrap()
}

fn rust_layout() -> String {
    use std::mem::size_of;
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("abi {ABI_MAJOR}.{ABI_MINOR}"));
    line(format!("entry {}", std::str::from_utf8(&alps_heuristic_abi::ENTRY_SYMBOL[..21]).unwrap()));
    line(format!(
        "status {} {} {} {}",
        Status::Ok as i32,
        Status::InvalidInput as i32,
        Status::Internal as i32,
        Status::Panic as i32
    ));
    line(format!(
        "direction {} {}",
        Direction::HigherIsMoreInformative as u32,
        Direction::LowerIsMoreInformative as u32
    ));
    line(format!("kind {} {}", Kind::Score as u32, Kind::Batch as u32));
    line(format!("inputs {} {} {}", Inputs::PROBABILITIES.0, Inputs::EMBEDDINGS.0, Inputs::LABELLED.0));
    macro_rules! fields {
        ($c:literal, $t:ty, [$($f:ident => $cf:literal),*]) => {
            line(format!("sizeof.{} {}", $c, size_of::<$t>()));
            $(line(format!("{}.{} {}", $c, $cf, offset_of!($t, $f)));)*
        };
    }
    fields!("AlpsProbabilities", ProbabilitiesRaw, [
        data => "data", n => "n", c => "c", k => "k", embeddings => "embeddings", d => "d",
        labelled_embeddings => "labelled_embeddings", labelled_classes => "labelled_classes", l => "l"
    ]);
    fields!("AlpsErrorBuffer", ErrorBuffer, [data => "data", capacity => "capacity", len => "len"]);
    fields!("AlpsHeuristicDescriptor", HeuristicDescriptor, [
        name => "name", version => "version", description => "description",
        direction => "direction", kind => "kind", score => "score", select => "select"
    ]);
    fields!("AlpsPluginDescriptor", PluginDescriptor, [
        abi_major => "abi_major", abi_minor => "abi_minor", name => "name", version => "version",
        heuristics => "heuristics", heuristic_count => "heuristic_count", heuristic_inputs => "heuristic_inputs"
    ]);
    out
}

#[test]
fn c_header_matches_the_rust_layout() {
    assert_eq!(c_layout(), rust_layout());
}

#[test]
fn entry_symbol_is_nul_terminated() {
    assert_eq!(alps_heuristic_abi::ENTRY_SYMBOL.last(), Some(&0));
    assert_eq!(alps_heuristic_abi::ENTRY_SYMBOL.len(), "alps_heuristic_plugin".len() + 1);
}
