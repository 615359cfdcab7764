/*
 * fuzz_memfd.h - the fuzz targets whose code under test opens a path
 * (tests/fuzz/fuzz_loader.c, fuzz_calib.c, fuzz_trweights.c): the input written to an
 * in-memory file, reached through its /proc/self/fd path, one per process.
 * Needs _GNU_SOURCE (memfd_create) before the first include.
 */
#ifndef HASHATTN_TESTS_FUZZ_MEMFD_H
#define HASHATTN_TESTS_FUZZ_MEMFD_H

#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_assert.h"

/* The path of a file that holds exactly data[0..size). */
static const char *fz_memfd_path(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("hashattn-fuzz", 0);
        FZ_ASSERT(fd >= 0, "memfd_create failed");
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    FZ_ASSERT(ftruncate(fd, 0) == 0 && pwrite(fd, data, size, 0) == (ssize_t)size, "memfd write failed");
    return path;
}

#endif /* HASHATTN_TESTS_FUZZ_MEMFD_H */
