/*
 * check.h - the trainer tests' assertions. Each binary ends with
 *   NAME: N passed, N failed
 *   NAME: OK | FAILED
 * and exits 0 or 1 accordingly.
 */
#ifndef HASHATTN_TESTS_TRAIN_CHECK_H
#define HASHATTN_TESTS_TRAIN_CHECK_H

#include <stdio.h>

static int g_passed __attribute__((unused)), g_failed __attribute__((unused));

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (cond) {                                                   \
            g_passed++;                                               \
        } else {                                                      \
            g_failed++;                                               \
            printf("  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
            printf(__VA_ARGS__);                                      \
            printf("\n");                                             \
        }                                                             \
    } while (0)

static inline int check_finish(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, g_passed, g_failed);
    printf("%s: %s\n", name, g_failed ? "FAILED" : "OK");
    return g_failed ? 1 : 0;
}

#endif
