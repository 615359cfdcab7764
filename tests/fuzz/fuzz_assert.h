/*
 * fuzz_assert.h - the invariant check of the fuzz targets (tests/fuzz/): on a
 * violation it names the place and the values and aborts, so that libFuzzer
 * saves the input (and the replay driver stops on it).
 */
#ifndef HASHATTN_TESTS_FUZZ_ASSERT_H
#define HASHATTN_TESTS_FUZZ_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#define FZ_ASSERT(cond, ...)                                                    \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "fuzz invariant violated at %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            abort();                                                            \
        }                                                                       \
    } while (0)

#endif /* HASHATTN_TESTS_FUZZ_ASSERT_H */
