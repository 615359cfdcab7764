/*
 * train.h - training every (layer, head) of a model on a calibration file
 * (the recipe is in docs/training.md).
 *
 * A task is what one loss couples: in the paper's layout one query head h
 * (its query MLP and its key MLP, which hashes KV head h / G); with compact
 * signatures one KV head g (the query MLPs of heads gG .. gG+G-1 and the one
 * key MLP of g). With the group objective (group_loss) every task is one KV
 * head g: its G query MLPs and its key MLP(s) (G in the paper's layout, one
 * compact) are trained together for group selection, on the summed score of
 * the G heads against the group's labels: the keys with the largest summed
 * attention weight sum_h softmax_h(q_h . k / sqrt(D)) over the G heads at the
 * same position (computed from the file's vectors; the file's per-head labels
 * are not used). Tasks are independent and run on a pool of threads.
 */
#ifndef HASHATTN_TOOLS_TRAIN_TRAIN_H
#define HASHATTN_TOOLS_TRAIN_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "calib.h"
#include "progress.h"
#include "weights_io.h"

typedef struct tr_options {
    int epochs;              /* passes over the training queries (when steps == 0) */
    int64_t steps;           /* > 0: optimiser steps per task instead of epochs */
    int32_t batch;           /* queries per step (all from one sequence) */
    int32_t negatives;       /* random visible candidate keys added per step */
    float lr;                /* Adam learning rate */
    float pos_weight;        /* BCE weight of the true top-k pairs */
    uint64_t seed;
    float holdout;           /* fraction of queries held out for the recall report */
    float budget_fraction;   /* the budget of the second recall: floor(f * n) */
    int32_t max_eval;        /* held-out queries evaluated per task; 0 = all */
    int threads;             /* tasks trained at once */
    int fresh;               /* 1: start from a fresh init (else from the model's weights) */
    int quiet;               /* no progress bar */
    const uint8_t *layers;   /* [num_layers], 1 = train this layer; NULL = all */
    int cuda;                /* 1: the batch math on CUDA device `device` (when built with it) */
    int device;
    int group_loss;          /* 1: the group objective (above); recall is then the group's */
} tr_options_t;

#define TR_OPTIONS_INIT { 10, 0, 64, 512, 1e-3f, 20.0f, 1, 0.1f, 0.0625f, 0, 1, 1, 0, NULL, 0, 0, 0 }

/* 1 when this build has the CUDA backend */
int tr_have_cuda(void);

/* Mean recall of the true top-k within the hard-hash selection (group_loss:
 * of the group's labels within group selection's summed scores). */
typedef struct tr_recall {
    double at_k;        /* selection of k = topk (32) tokens */
    double at_budget;   /* selection of floor(budget_fraction * n) tokens */
    int64_t n_k;        /* queries averaged (those with more than k candidates) */
    int64_t n_budget;
} tr_recall_t;

typedef struct tr_task_report {
    int32_t layer, group;          /* group: query head (paper) or KV head (compact, group_loss) */
    int64_t train_queries, eval_queries, steps;
    double loss_first, loss_last;  /* mean batch loss over the first and last tenth of steps */
    tr_recall_t before, after;     /* the hard hash before and after training */
    tr_recall_t simhash;           /* baseline: 32 random hyperplanes (SimHash) on raw q and k */
    double expected_random_k;      /* recall@k of a uniformly random selection, for scale */
    double seconds;
} tr_task_report_t;

/* Number of tasks for the layers (NULL: all). */
int32_t tr_num_tasks(const tr_calib_shape_t *shape, int compact, int group_loss, const uint8_t *layers);

/* Train every selected task. `model` holds the shape (its num_layers, heads
 * and head_dim equal the calibration's) and, unless o->fresh, the starting
 * weights; the trained MLPs are written back into it. reports: [num_tasks].
 * Progress goes to stderr unless o->quiet. */
int tr_train(const tr_options_t *o, const tr_calib_t *calib, tr_model_t *model, tr_task_report_t *reports,
             char *err, size_t errlen);

/* Recall of the hard hash of `model` on (layer, group)'s held-out queries
 * (same split as training with o->seed and o->holdout; with holdout 0 every
 * query counts; o->group_loss: group is a KV head and the recall is group
 * selection's against the group's labels, whatever the weights were trained
 * with). Used by tr_train and the tests. */
int tr_evaluate(const tr_options_t *o, const tr_calib_t *calib, const tr_model_t *model, int32_t layer,
                int32_t group, tr_recall_t *out, tr_recall_t *simhash, char *err, size_t errlen);

/* The labels tr_train uses for (layer, group) (o->group_loss as tr_evaluate's
 * group): up to max queries in task order (head by head, each head's records
 * in file order; group_loss: head group * G's), each its position, its
 * sequence id and topk labels (the file's, or the group's, -1 padded).
 * *count: the task's queries (all of them, even past max). */
int tr_task_labels(const tr_options_t *o, const tr_calib_t *calib, int compact, int32_t layer, int32_t group,
                   int64_t max, int32_t *positions, int64_t *seqs, int32_t *labels, int64_t *count, char *err,
                   size_t errlen);

/* Selection of the k best candidates by score (ties to the newer token),
 * and how many of `labels` (positions, -1 = none) it holds.
 * scores [hi - lo + 1] in [0, max_score] for the candidates [lo, hi]
 * (max_score 32, or 32 G for group selection; at most 2048). */
int32_t tr_hits_in_selection(const uint16_t *scores, int32_t max_score, int32_t lo, int32_t hi, int32_t k,
                             const int32_t *labels, int32_t num_labels);

#endif
