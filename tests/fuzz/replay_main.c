/*
 * replay_main.c - runs a fuzz target over files without libFuzzer: the
 * corpus in plain CI (CTest), or a crash file to debug.
 *
 *   hashattn-fuzz-<target>-replay <file or directory>...
 *
 * Directories are read one level deep, in name order. Ends with
 * "<target> replay: N inputs OK"; a violated invariant aborts (as under the
 * fuzzer) after naming the input on stderr.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifndef FUZZ_TARGET_NAME
#define FUZZ_TARGET_NAME "fuzz"
#endif

static long run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("cannot open %s\n", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    uint8_t *buf = (uint8_t *)malloc(n > 0 ? (size_t)n : 1);
    size_t got = fread(buf, 1, (size_t)(n > 0 ? n : 0), f);
    fclose(f);
    fprintf(stderr, "input %s (%zu bytes)\n", path, got);
    LLVMFuzzerTestOneInput(buf, got);
    free(buf);
    return 1;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    long count = 0;
    int errors = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            printf("%s does not exist\n", argv[i]);
            errors++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            count += run_file(argv[i]) > 0;
            continue;
        }
        DIR *d = opendir(argv[i]);
        char **names = NULL;
        size_t nn = 0;
        for (struct dirent *e; d && (e = readdir(d));) {
            if (e->d_name[0] == '.')
                continue;
            names = (char **)realloc(names, (nn + 1) * sizeof *names);
            names[nn] = (char *)malloc(strlen(argv[i]) + strlen(e->d_name) + 2);
            sprintf(names[nn++], "%s/%s", argv[i], e->d_name);
        }
        if (d)
            closedir(d);
        qsort(names, nn, sizeof *names, cmp);
        for (size_t k = 0; k < nn; k++) {
            if (stat(names[k], &st) == 0 && S_ISREG(st.st_mode))
                count += run_file(names[k]) > 0;
            free(names[k]);
        }
        free(names);
    }
    if (count == 0)
        errors++;
    printf("%s replay: %ld inputs %s\n", FUZZ_TARGET_NAME, count, errors ? "FAILED" : "OK");
    return errors ? 1 : 0;
}
