/*
 * progress.h - a progress bar with rate and ETA on stderr, shared by worker
 * threads. On a terminal it redraws one line (at most 5 times a second);
 * otherwise it prints a line at every 10% so that logs stay short.
 */
#ifndef HASHATTN_TOOLS_TRAIN_PROGRESS_H
#define HASHATTN_TOOLS_TRAIN_PROGRESS_H

#include <pthread.h>
#include <stdint.h>

typedef struct tr_progress {
    pthread_mutex_t mu;
    const char *label;
    double total, done; /* work units */
    double t0, last_draw;
    int tty, quiet, last_decile;
    double loss;        /* latest loss to show (NAN: none) */
} tr_progress_t;

void tr_progress_init(tr_progress_t *p, const char *label, double total, int quiet);
void tr_progress_add(tr_progress_t *p, double units, double loss);
void tr_progress_finish(tr_progress_t *p);
double tr_now(void); /* monotonic seconds */

#endif
