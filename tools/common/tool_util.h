/*
 * tool_util.h - the two helpers every tool had its own copy of: an error
 * message into the caller's buffer, and a monotonic clock in seconds.
 * Header only; the runner, the trainer, the demo and bench_cpu include it as
 * "tools/common/tool_util.h" with the repository root on their include path.
 */
#ifndef HASHATTN_TOOLS_COMMON_TOOL_UTIL_H
#define HASHATTN_TOOLS_COMMON_TOOL_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <time.h>

/* Formats into err[errlen] (nothing when err is NULL or errlen is 0) and
 * returns -1, so that `return tool_err(err, errlen, ...)` fails in one line. */
static inline int tool_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline int tool_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* CLOCK_MONOTONIC is declared when the includer asked for POSIX
 * (_POSIX_C_SOURCE before its first #include), as every user of the clock does */
#ifdef CLOCK_MONOTONIC
static inline double tool_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#endif

#endif /* HASHATTN_TOOLS_COMMON_TOOL_UTIL_H */
