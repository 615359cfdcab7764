/*
 * test_blocks.c - the runner's paged block allocator (tools/runner/blocks.c).
 */
#include <string.h>

#include "blocks.h"
#include "check.h"

int main(void)
{
    rn_block_pool_t p;
    rn_seq_t a, b;
    printf("blocks(pool=8, block_size=4)\n");
    CHECK(rn_block_pool_init(&p, 0, 4) == -1 && rn_block_pool_init(&p, 4, 0) == -1, "bad sizes refused");
    CHECK(rn_block_pool_init(&p, 8, 4) == 0 && p.n_free == 8, "init");
    CHECK(rn_seq_init(&a, 5) == 0 && rn_seq_init(&b, 8) == 0, "seq init");

    CHECK(rn_seq_append(&p, &a, 1) == 0 && a.len == 1 && a.n_blocks == 1 && a.table[0] == 0, "first block is 0");
    CHECK(rn_seq_append(&p, &a, 3) == 0 && a.n_blocks == 1, "block filled, no new block");
    CHECK(rn_seq_append(&p, &a, 1) == 0 && a.n_blocks == 2 && a.table[1] == 1, "second block");
    CHECK(rn_seq_slot(&p, &a, 4) == 4 && rn_seq_slot(&p, &a, 3) == 3, "slots");
    CHECK(rn_seq_append(&p, &b, 9) == 0 && b.n_blocks == 3 && b.table[0] == 2, "second sequence");
    CHECK(rn_seq_slot(&p, &b, 8) == 4 * 4 + 0, "slot of b[8] = block 4 offset 0 -> %lld",
          (long long)rn_seq_slot(&p, &b, 8));
    CHECK(rn_seq_append(&p, &a, 100) == -1 && a.len == 5 && a.n_blocks == 2, "too long: refused, unchanged");
    CHECK(rn_seq_append(&p, &a, 16) == -1 && a.len == 5, "21 tokens need 6 blocks, the table has 5");
    CHECK(rn_seq_append(&p, &a, 11) == 0 && a.n_blocks == 4 && p.n_free == 1, "exactly fits");
    CHECK(rn_seq_append(&p, &a, 5) == -1, "pool exhausted");
    rn_seq_clear(&p, &a);
    CHECK(a.len == 0 && a.n_blocks == 0 && p.n_free == 5, "clear gives blocks back");
    CHECK(rn_seq_append(&p, &a, 0) == 0 && a.n_blocks == 0, "append 0");

    rn_seq_clear(&p, &b);
    rn_block_pool_shuffle(&p, 7);
    int seen[8] = { 0 }, ok = 1;
    for (int i = 0; i < 8; i++) {
        int32_t id = rn_block_alloc(&p);
        ok = ok && id >= 0 && id < 8 && !seen[id];
        if (id >= 0 && id < 8)
            seen[id] = 1;
    }
    CHECK(ok && rn_block_alloc(&p) == -1, "shuffled pool hands out each block once");
    rn_seq_destroy(&a);
    rn_seq_destroy(&b);
    rn_block_pool_destroy(&p);
    return check_finish("test_runner_blocks");
}
