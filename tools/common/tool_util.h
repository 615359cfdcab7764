/*
 * tool_util.h - the helpers every tool had its own copy of: an error message
 * into the caller's buffer, a monotonic clock in seconds, and command-line
 * numbers read whole and in range.
 * Header only; the runner, the trainer, the demo and bench_cpu include it as
 * "tools/common/tool_util.h" with the repository root on their include path.
 */
#ifndef HASHATTN_TOOLS_COMMON_TOOL_UTIL_H
#define HASHATTN_TOOLS_COMMON_TOOL_UTIL_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
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

/* The value of option `opt` of `tool`: all of s a decimal integer in
 * [lo, hi] (tool_parse_int) or a number in [lo, hi] (tool_parse_float; NaN
 * never is). 0, or -1 after a line on stderr naming the tool, the option,
 * the range and what was given. */
static inline int tool_parse_int(const char *tool, const char *opt, const char *s, long long lo, long long hi,
                                 long long *out)
{
    char *end;
    errno = 0;
    const long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "%s: %s wants an integer in [%lld, %lld], got '%s'\n", tool, opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static inline int tool_parse_float(const char *tool, const char *opt, const char *s, double lo, double hi,
                                   double *out)
{
    char *end;
    errno = 0;
    const double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi)) {
        fprintf(stderr, "%s: %s wants a number in [%g, %g], got '%s'\n", tool, opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

#endif /* HASHATTN_TOOLS_COMMON_TOOL_UTIL_H */
