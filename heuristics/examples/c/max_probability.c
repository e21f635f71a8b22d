/*
 * Example ALPS heuristic plugin in C, written against heuristics/abi/include/alps_heuristic.h:
 *
 * - `c_least_confidence`: the same score as the built-in `least_confidence` (max over classes of
 *   the mean probability over the K MC iterations, max_c pbar[n, c]; lower = more informative);
 * - `c_distance_to_labelled` (ABI 1.1, asks for ALPS_INPUT_LABELLED): each sample's squared
 *   Euclidean distance from its embedding to the nearest labelled example's embedding, the per-sample core
 *   of the k-center criterion (Sener & Savarese 2018); higher = more informative; 0 for every
 *   sample while nothing is labelled.
 *
 * Build (from the repository root) and deploy:
 *
 *     cc -std=c11 -O2 -shared -fPIC -I heuristics/abi/include heuristics/examples/c/max_probability.c -o c_least_confidence.so
 *     cp c_least_confidence.so "$ALPS_PLUGIN_DIR/.c_least_confidence.so.tmp"
 *     mv "$ALPS_PLUGIN_DIR/.c_least_confidence.so.tmp" "$ALPS_PLUGIN_DIR/c_least_confidence.so"
 *
 * Define ALPS_EXAMPLE_WRONG_ABI (-DALPS_EXAMPLE_WRONG_ABI) to build a plugin that claims the next
 * ABI major, which the host must refuse, or ALPS_EXAMPLE_ABI_1_0 to build `c_least_confidence`
 * alone with the ABI 1.0 descriptor layout, which the host must still load, or
 * ALPS_EXAMPLE_UNKNOWN_INPUT to ask for an undefined input flag (tests/c_plugin.rs).
 *
 * Everything except the entry symbol is `static`, so two loaded versions of this plugin never
 * resolve each other's functions. See heuristics/abi/README.md for the rules of the ABI.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "alps_heuristic.h"

#ifdef ALPS_EXAMPLE_WRONG_ABI
#define EXAMPLE_ABI_MAJOR (ALPS_ABI_MAJOR + 1u)
#else
#define EXAMPLE_ABI_MAJOR ALPS_ABI_MAJOR
#endif

/* Copies `message` into the host's error buffer, truncated to its capacity (the message is
 * ASCII, so truncation never splits a UTF-8 character). A null buffer is ignored. */
static void write_error(AlpsErrorBuffer *error, const char *message) {
    if (error == NULL) {
        return;
    }
    if (error->data == NULL) {
        error->len = 0;
        return;
    }
    size_t len = strlen(message);
    if (len > error->capacity) {
        len = error->capacity;
    }
    memcpy(error->data, message, len);
    error->len = len;
}

/* max_c (1/K) sum_k P[n, c, k] for every sample n. The host guarantees a valid input (see the
 * header), but a plugin must not trust a null pointer or an empty shape: it reports them. */
static int32_t max_probability(const AlpsProbabilities *input, uint64_t seed, float *scores_out,
                               AlpsErrorBuffer *error) {
    (void)seed; /* deterministic: no randomness */
    if (input == NULL) {
        write_error(error, "c_least_confidence: null input");
        return ALPS_STATUS_INVALID_INPUT;
    }
    if (input->data == NULL || scores_out == NULL) {
        write_error(error, "c_least_confidence: null data or scores buffer");
        return ALPS_STATUS_INVALID_INPUT;
    }
    const size_t n = input->n, c = input->c, k = input->k;
    if (n == 0 || c == 0 || k == 0) {
        write_error(error, "c_least_confidence: empty input (n, c and k must be at least 1)");
        return ALPS_STATUS_INVALID_INPUT;
    }
    for (size_t i = 0; i < n; i++) {
        const float *sample = input->data + i * c * k; /* row-major [C, K], K fastest */
        double best = 0.0;
        for (size_t j = 0; j < c; j++) {
            const float *row = sample + j * k;
            double sum = 0.0; /* accumulate in double, like the built-in */
            for (size_t t = 0; t < k; t++) {
                sum += row[t];
            }
            const double mean = sum / (double)k;
            if (j == 0 || mean > best) {
                best = mean;
            }
        }
        scores_out[i] = (float)best;
    }
    return ALPS_STATUS_OK;
}

#ifndef ALPS_EXAMPLE_ABI_1_0
/* min over labelled l of ||e[n] - e_l[l]||² for every sample n (ABI 1.1 fields). Squared, so the
 * plugin needs no libm; the order is the same as by distance. */
static int32_t distance_to_labelled(const AlpsProbabilities *input, uint64_t seed, float *scores_out,
                                    AlpsErrorBuffer *error) {
    (void)seed;
    if (input == NULL || scores_out == NULL || input->embeddings == NULL || input->d == 0) {
        write_error(error, "c_distance_to_labelled: the pool's embeddings are required");
        return ALPS_STATUS_INVALID_INPUT;
    }
    const size_t n = input->n, d = input->d, l = input->l;
    if (l > 0 && input->labelled_embeddings == NULL) {
        write_error(error, "c_distance_to_labelled: l > 0 without labelled embeddings");
        return ALPS_STATUS_INVALID_INPUT;
    }
    for (size_t i = 0; i < n; i++) {
        const float *sample = input->embeddings + i * d;
        double nearest = 0.0;
        for (size_t j = 0; j < l; j++) {
            const float *labelled = input->labelled_embeddings + j * d;
            double squared = 0.0;
            for (size_t x = 0; x < d; x++) {
                const double delta = (double)sample[x] - (double)labelled[x];
                squared += delta * delta;
            }
            if (j == 0 || squared < nearest) {
                nearest = squared;
            }
        }
        scores_out[i] = (float)nearest;
    }
    return ALPS_STATUS_OK;
}
#endif

static const AlpsHeuristicDescriptor HEURISTICS[] = {
    {
        .name = "c_least_confidence",
        .version = "1.0.0",
        .description = "Max over classes of the mean probability over MC iterations, in C (lower = more informative)",
        .direction = ALPS_DIRECTION_LOWER_IS_MORE_INFORMATIVE,
        .kind = ALPS_KIND_SCORE,
        .score = max_probability,
        .select = NULL,
    },
#ifndef ALPS_EXAMPLE_ABI_1_0
    {
        .name = "c_distance_to_labelled",
        .version = "1.0.0",
        .description = "Squared distance from the embedding to the nearest labelled one (Sener & Savarese 2018), in C",
        .direction = ALPS_DIRECTION_HIGHER_IS_MORE_INFORMATIVE,
        .kind = ALPS_KIND_SCORE,
        .score = distance_to_labelled,
        .select = NULL,
    },
#endif
};

#define HEURISTIC_COUNT (sizeof HEURISTICS / sizeof HEURISTICS[0])

#ifdef ALPS_EXAMPLE_ABI_1_0
/* The ABI 1.0 descriptor: it ends before heuristic_inputs, and declares minor 0. */
typedef struct {
    uint32_t abi_major, abi_minor;
    const char *name, *version;
    const AlpsHeuristicDescriptor *heuristics;
    size_t heuristic_count;
} PluginDescriptor10;

static const PluginDescriptor10 PLUGIN = {
    .abi_major = EXAMPLE_ABI_MAJOR,
    .abi_minor = 0,
    .name = "example-c",
    .version = "1.0.0",
    .heuristics = HEURISTICS,
    .heuristic_count = HEURISTIC_COUNT,
};
#else
/* What each heuristic asks for, parallel to HEURISTICS. ALPS_EXAMPLE_UNKNOWN_INPUT asks for a
 * flag this ABI does not define, which the host must refuse. */
#ifdef ALPS_EXAMPLE_UNKNOWN_INPUT
static const uint32_t INPUTS[] = {ALPS_INPUT_PROBABILITIES, 8u};
#else
static const uint32_t INPUTS[] = {ALPS_INPUT_PROBABILITIES, ALPS_INPUT_LABELLED};
#endif

static const AlpsPluginDescriptor PLUGIN = {
    .abi_major = EXAMPLE_ABI_MAJOR,
    .abi_minor = ALPS_ABI_MINOR,
    .name = "example-c",
    .version = "1.1.0",
    .heuristics = HEURISTICS,
    .heuristic_count = HEURISTIC_COUNT,
    .heuristic_inputs = INPUTS,
};
#endif

/* The entry symbol: the only exported function (declared first, as alps_heuristic.h only names
 * its type, AlpsEntryFn). */
const AlpsPluginDescriptor *alps_heuristic_plugin(void);

const AlpsPluginDescriptor *alps_heuristic_plugin(void) {
    return (const AlpsPluginDescriptor *)&PLUGIN;
}
