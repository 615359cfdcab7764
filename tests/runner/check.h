/*
 * check.h - the runner tests' few assertion macros. Each binary ends with
 *   NAME: N passed, N failed, N skipped
 *   NAME: OK | FAILED | SKIPPED
 * and exits 0, 1, or 77 (CTest's SKIP_RETURN_CODE) when everything skipped.
 */
#ifndef HASHATTN_TESTS_RUNNER_CHECK_H
#define HASHATTN_TESTS_RUNNER_CHECK_H

#include <stdio.h>

static int g_passed, g_failed, g_skipped;

#define CHECK(cond, ...)                                           \
    do {                                                           \
        if (cond) {                                                \
            g_passed++;                                            \
        } else {                                                   \
            g_failed++;                                            \
            printf("  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            printf(__VA_ARGS__);                                   \
            printf("\n");                                          \
        }                                                          \
    } while (0)

#define SKIP(...)                \
    do {                         \
        g_skipped++;             \
        printf("  SKIP: ");      \
        printf(__VA_ARGS__);     \
        printf("\n");            \
    } while (0)

static int check_finish(const char *name)
{
    printf("%s: %d passed, %d failed, %d skipped\n", name, g_passed, g_failed, g_skipped);
    if (g_failed) {
        printf("%s: FAILED\n", name);
        return 1;
    }
    if (!g_passed && g_skipped) {
        printf("%s: SKIPPED\n", name);
        return 77;
    }
    printf("%s: OK\n", name);
    return 0;
}

#endif
