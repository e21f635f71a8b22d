/*
 * ALPS heuristic plugin ABI, version 1.1 — the C view of crate `alps-heuristic-abi`
 * (heuristics/abi/src/lib.rs). A test (tests/header.rs) compiles this header and checks that
 * every size and field offset matches the Rust definitions.
 *
 * A plugin is a shared library exporting
 *     const AlpsPluginDescriptor *alps_heuristic_plugin(void);
 * that returns a pointer to a descriptor living as long as the library. All buffers belong to the
 * host; nothing allocated on one side is freed on the other. See heuristics/abi/README.md.
 */
#ifndef ALPS_HEURISTIC_H
#define ALPS_HEURISTIC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ALPS_ABI_MAJOR 1u
#define ALPS_ABI_MINOR 1u
#define ALPS_ENTRY_SYMBOL "alps_heuristic_plugin"

/* Status codes returned by score and select functions. */
#define ALPS_STATUS_OK 0
#define ALPS_STATUS_INVALID_INPUT 1
#define ALPS_STATUS_INTERNAL 2
#define ALPS_STATUS_PANIC 3

/* Direction codes: which end of the score is more informative. */
#define ALPS_DIRECTION_HIGHER_IS_MORE_INFORMATIVE 1u
#define ALPS_DIRECTION_LOWER_IS_MORE_INFORMATIVE 2u

/* Kind codes. */
#define ALPS_KIND_SCORE 1u /* one score per sample: `score` is set */
#define ALPS_KIND_BATCH 2u /* joint selection of query_size samples: `select` is set */

/* Input flags (ABI 1.1): what a heuristic asks for besides probabilities, one uint32_t per
 * heuristic in AlpsPluginDescriptor.heuristic_inputs. */
#define ALPS_INPUT_PROBABILITIES 0u /* probabilities only (every 1.0 heuristic) */
#define ALPS_INPUT_EMBEDDINGS 1u    /* the pool's backbone embeddings [n, d] */
#define ALPS_INPUT_LABELLED 3u      /* also the labelled set [l, d] + classes [l]; implies EMBEDDINGS */

/* Growth rules for minor versions: new fields may be appended to the structs the host allocates
 * and passes in (AlpsProbabilities, AlpsErrorBuffer; 1.1 appended the embedding fields to
 * AlpsProbabilities) and to AlpsPluginDescriptor (read only from plugins declaring that minor).
 * AlpsHeuristicDescriptor is laid out as an array, so its size never changes within a major. */

/* The input of a call. Probabilities P[n, c, k], row-major (k fastest): value (i, j, t) is
 * data[(i * c + j) * k + t]. The host guarantees c >= 2, n, k >= 1, finite values in [0, 1],
 * columns summing to 1. The ABI 1.1 fields are NULL / 0 unless the heuristic asked for them
 * (heuristic_inputs); embeddings are finite. */
typedef struct AlpsProbabilities {
    const float *data;
    size_t n; /* samples */
    size_t c; /* classes */
    size_t k; /* MC iterations */
    /* ABI 1.1 */
    const float *embeddings;          /* pool embeddings [n, d], row-major, or NULL */
    size_t d;                         /* embedding dimension, >= 1 when embeddings is set */
    const float *labelled_embeddings; /* labelled set [l, d], row-major, or NULL (l == 0) */
    const uint32_t *labelled_classes; /* class of each labelled example [l], each < c, or NULL */
    size_t l;                         /* labelled examples (0 at a cold start) */
} AlpsProbabilities;

/* Host-owned error message buffer: write at most `capacity` bytes of UTF-8, set `len`. */
typedef struct AlpsErrorBuffer {
    uint8_t *data;
    size_t capacity;
    size_t len;
} AlpsErrorBuffer;

/* Writes n scores to scores_out. Returns an ALPS_STATUS_* code. */
typedef int32_t (*AlpsScoreFn)(const AlpsProbabilities *input, uint64_t seed, float *scores_out,
                               AlpsErrorBuffer *error);

/* Writes query_size indices (selection order) and their scores. Returns an ALPS_STATUS_* code. */
typedef int32_t (*AlpsSelectFn)(const AlpsProbabilities *input, size_t query_size, uint64_t seed,
                                uint32_t *indices_out, float *scores_out, AlpsErrorBuffer *error);

typedef struct AlpsHeuristicDescriptor {
    const char *name;        /* e.g. "bald": lowercase ASCII letters, digits, '_' */
    const char *version;     /* semantic version, e.g. "1.0.0" */
    const char *description; /* one line */
    uint32_t direction;      /* ALPS_DIRECTION_* */
    uint32_t kind;           /* ALPS_KIND_* */
    AlpsScoreFn score;       /* set for ALPS_KIND_SCORE, else NULL */
    AlpsSelectFn select;     /* set for ALPS_KIND_BATCH, else NULL */
} AlpsHeuristicDescriptor;

typedef struct AlpsPluginDescriptor {
    uint32_t abi_major; /* ALPS_ABI_MAJOR */
    uint32_t abi_minor; /* ALPS_ABI_MINOR */
    const char *name;
    const char *version;
    const AlpsHeuristicDescriptor *heuristics;
    size_t heuristic_count;
    /* ABI 1.1: heuristic_count ALPS_INPUT_* flag words parallel to heuristics, or NULL
     * (probabilities only). Read only from plugins declaring minor >= 1. */
    const uint32_t *heuristic_inputs;
} AlpsPluginDescriptor;

typedef const AlpsPluginDescriptor *(*AlpsEntryFn)(void);

/* The entry symbol every plugin defines (declared here so plugins compile with
 * -Wmissing-prototypes and export it even when built with -fvisibility=hidden). */
__attribute__((visibility("default"))) const AlpsPluginDescriptor *alps_heuristic_plugin(void);

#ifdef __cplusplus
}
#endif

#endif /* ALPS_HEURISTIC_H */
