/*
 * progress.c - see progress.h.
 */
#define _POSIX_C_SOURCE 200809L
#include "progress.h"

#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include "tools/common/tool_util.h"

double tr_now(void) { return tool_now_s(); }

static void fmt_time(char *buf, size_t n, double s)
{
    if (!(s >= 0) || s > 1e7)
        snprintf(buf, n, "?");
    else if (s < 60)
        snprintf(buf, n, "%.0fs", s);
    else if (s < 3600)
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else
        snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
}

static void draw(tr_progress_t *p, double now, int final)
{
    double frac = p->total > 0 ? p->done / p->total : 1.0;
    if (frac > 1)
        frac = 1;
    double el = now - p->t0, eta = frac > 0 ? el * (1 - frac) / frac : -1;
    char e1[32], e2[32], bar[31], loss[32] = "";
    fmt_time(e1, sizeof e1, el);
    fmt_time(e2, sizeof e2, eta);
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    if (!isnan(p->loss))
        snprintf(loss, sizeof loss, "  loss %.4f", p->loss);
    fprintf(stderr, "%s%s [%s] %5.1f%%  elapsed %s  ETA %s%s%s", p->tty ? "\r" : "", p->label, bar,
            100 * frac, e1, final ? "0s" : e2, loss, p->tty && !final ? "   " : "\n");
    fflush(stderr);
}

void tr_progress_init(tr_progress_t *p, const char *label, double total, int quiet)
{
    pthread_mutex_init(&p->mu, NULL);
    p->label = label;
    p->total = total;
    p->done = 0;
    p->t0 = tr_now();
    p->last_draw = 0;
    p->tty = isatty(2);
    p->quiet = quiet;
    p->last_decile = 0;
    p->loss = NAN;
}

void tr_progress_add(tr_progress_t *p, double units, double loss)
{
    pthread_mutex_lock(&p->mu);
    p->done += units;
    if (!isnan(loss))
        p->loss = loss;
    if (!p->quiet) {
        double now = tr_now();
        int decile = p->total > 0 ? (int)(10 * p->done / p->total) : 10;
        if (p->tty ? now - p->last_draw > 0.2 : decile > p->last_decile) {
            draw(p, now, 0);
            p->last_draw = now;
            p->last_decile = decile;
        }
    }
    pthread_mutex_unlock(&p->mu);
}

void tr_progress_finish(tr_progress_t *p)
{
    pthread_mutex_lock(&p->mu);
    p->done = p->total;
    if (!p->quiet && (p->tty || p->last_decile < 10))
        draw(p, tr_now(), 1);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_destroy(&p->mu);
}
