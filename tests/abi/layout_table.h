/*
 * layout_table.h - the pinned x86-64 layout of every public struct of the 1.0
 * ABI and of the DLPack structs that cross it, and the values of every public
 * constant. Generated once from abi/hashattn/hashattn.h with gcc 12 (x86-64,
 * LP64) by expanding offsetof/sizeof/_Alignof over each field (see
 * docs/abi-conformance.md, "Layout"); the numbers are written out here on
 * purpose: a change to the header that moves anything fails the test instead
 * of silently regenerating the table. Appending a field at the end of a
 * struct changes only its S() line (and adds an F() line) in a new minor.
 * 1.1 appended the tensor-parallel fields, structs, entries and constants, and
 * config.dense_below; 1.2 appended cache_write_args.query and
 * .query_signatures, and decode_args.query_signatures.
 *
 *   S(type, sizeof, alignof)
 *   F(type, field, offsetof, sizeof)
 *   V(constant, value)
 */
#ifndef HASHATTN_TESTS_ABI_LAYOUT_TABLE_H
#define HASHATTN_TESTS_ABI_LAYOUT_TABLE_H

#define HA_LAYOUT_TABLE(S, F) \
    S(hashattn_budget_t, 24, 8) \
    F(hashattn_budget_t, struct_size, 0, 8) \
    F(hashattn_budget_t, sink_tokens, 8, 4) \
    F(hashattn_budget_t, recent_tokens, 12, 4) \
    F(hashattn_budget_t, heavy_count, 16, 4) \
    F(hashattn_budget_t, heavy_fraction, 20, 4) \
    S(hashattn_context_config_t, 112, 8) \
    F(hashattn_context_config_t, struct_size, 0, 8) \
    F(hashattn_context_config_t, flags, 8, 4) \
    F(hashattn_context_config_t, num_layers, 12, 4) \
    F(hashattn_context_config_t, num_q_heads, 16, 4) \
    F(hashattn_context_config_t, num_kv_heads, 20, 4) \
    F(hashattn_context_config_t, head_dim, 24, 4) \
    F(hashattn_context_config_t, block_size, 28, 4) \
    F(hashattn_context_config_t, dtype, 32, 4) \
    F(hashattn_context_config_t, device, 36, 8) \
    F(hashattn_context_config_t, kv_layout, 44, 4) \
    F(hashattn_context_config_t, hash_bits, 48, 4) \
    F(hashattn_context_config_t, mlp_width, 52, 4) \
    F(hashattn_context_config_t, selection, 56, 4) \
    F(hashattn_context_config_t, signature_layout, 60, 4) \
    F(hashattn_context_config_t, softmax_scale, 64, 4) \
    F(hashattn_context_config_t, budget, 72, 24) \
    F(hashattn_context_config_t, tp_rank, 96, 4) \
    F(hashattn_context_config_t, tp_size, 100, 4) \
    F(hashattn_context_config_t, dense_below, 104, 4) \
    S(hashattn_mlp_weights_t, 56, 8) \
    F(hashattn_mlp_weights_t, struct_size, 0, 8) \
    F(hashattn_mlp_weights_t, w1, 8, 8) \
    F(hashattn_mlp_weights_t, b1, 16, 8) \
    F(hashattn_mlp_weights_t, w2, 24, 8) \
    F(hashattn_mlp_weights_t, b2, 32, 8) \
    F(hashattn_mlp_weights_t, w3, 40, 8) \
    F(hashattn_mlp_weights_t, b3, 48, 8) \
    S(hashattn_weights_bind_args_t, 128, 8) \
    F(hashattn_weights_bind_args_t, struct_size, 0, 8) \
    F(hashattn_weights_bind_args_t, flags, 8, 4) \
    F(hashattn_weights_bind_args_t, query, 16, 56) \
    F(hashattn_weights_bind_args_t, key, 72, 56) \
    S(hashattn_weights_load_args_t, 24, 8) \
    F(hashattn_weights_load_args_t, struct_size, 0, 8) \
    F(hashattn_weights_load_args_t, flags, 8, 4) \
    F(hashattn_weights_load_args_t, path, 16, 8) \
    S(hashattn_workspace_args_t, 32, 8) \
    F(hashattn_workspace_args_t, struct_size, 0, 8) \
    F(hashattn_workspace_args_t, op, 8, 4) \
    F(hashattn_workspace_args_t, max_num_seqs, 12, 4) \
    F(hashattn_workspace_args_t, max_num_tokens, 16, 8) \
    F(hashattn_workspace_args_t, max_blocks_per_seq, 24, 4) \
    S(hashattn_cache_write_args_t, 104, 8) \
    F(hashattn_cache_write_args_t, struct_size, 0, 8) \
    F(hashattn_cache_write_args_t, flags, 8, 4) \
    F(hashattn_cache_write_args_t, layer, 12, 4) \
    F(hashattn_cache_write_args_t, key, 16, 8) \
    F(hashattn_cache_write_args_t, value, 24, 8) \
    F(hashattn_cache_write_args_t, key_cache, 32, 8) \
    F(hashattn_cache_write_args_t, value_cache, 40, 8) \
    F(hashattn_cache_write_args_t, signature_cache, 48, 8) \
    F(hashattn_cache_write_args_t, slot_mapping, 56, 8) \
    F(hashattn_cache_write_args_t, workspace, 64, 8) \
    F(hashattn_cache_write_args_t, workspace_size, 72, 8) \
    F(hashattn_cache_write_args_t, stream, 80, 8) \
    F(hashattn_cache_write_args_t, query, 88, 8) \
    F(hashattn_cache_write_args_t, query_signatures, 96, 8) \
    S(hashattn_decode_args_t, 128, 8) \
    F(hashattn_decode_args_t, struct_size, 0, 8) \
    F(hashattn_decode_args_t, flags, 8, 4) \
    F(hashattn_decode_args_t, layer, 12, 4) \
    F(hashattn_decode_args_t, query, 16, 8) \
    F(hashattn_decode_args_t, key_cache, 24, 8) \
    F(hashattn_decode_args_t, value_cache, 32, 8) \
    F(hashattn_decode_args_t, signature_cache, 40, 8) \
    F(hashattn_decode_args_t, block_tables, 48, 8) \
    F(hashattn_decode_args_t, seq_lens, 56, 8) \
    F(hashattn_decode_args_t, output, 64, 8) \
    F(hashattn_decode_args_t, budget, 72, 8) \
    F(hashattn_decode_args_t, selected_indices, 80, 8) \
    F(hashattn_decode_args_t, selected_counts, 88, 8) \
    F(hashattn_decode_args_t, workspace, 96, 8) \
    F(hashattn_decode_args_t, workspace_size, 104, 8) \
    F(hashattn_decode_args_t, stream, 112, 8) \
    F(hashattn_decode_args_t, query_signatures, 120, 8) \
    S(hashattn_prefill_args_t, 96, 8) \
    F(hashattn_prefill_args_t, struct_size, 0, 8) \
    F(hashattn_prefill_args_t, flags, 8, 4) \
    F(hashattn_prefill_args_t, layer, 12, 4) \
    F(hashattn_prefill_args_t, query, 16, 8) \
    F(hashattn_prefill_args_t, key_cache, 24, 8) \
    F(hashattn_prefill_args_t, value_cache, 32, 8) \
    F(hashattn_prefill_args_t, block_tables, 40, 8) \
    F(hashattn_prefill_args_t, seq_lens, 48, 8) \
    F(hashattn_prefill_args_t, query_start_loc, 56, 8) \
    F(hashattn_prefill_args_t, output, 64, 8) \
    F(hashattn_prefill_args_t, workspace, 72, 8) \
    F(hashattn_prefill_args_t, workspace_size, 80, 8) \
    F(hashattn_prefill_args_t, stream, 88, 8) \
    S(hashattn_hash_args_t, 64, 8) \
    F(hashattn_hash_args_t, struct_size, 0, 8) \
    F(hashattn_hash_args_t, flags, 8, 4) \
    F(hashattn_hash_args_t, layer, 12, 4) \
    F(hashattn_hash_args_t, side, 16, 4) \
    F(hashattn_hash_args_t, input, 24, 8) \
    F(hashattn_hash_args_t, signatures, 32, 8) \
    F(hashattn_hash_args_t, workspace, 40, 8) \
    F(hashattn_hash_args_t, workspace_size, 48, 8) \
    F(hashattn_hash_args_t, stream, 56, 8) \
    S(hashattn_comm_id_t, 128, 1) \
    S(hashattn_comm_create_args_t, 24, 8) \
    F(hashattn_comm_create_args_t, struct_size, 0, 8) \
    F(hashattn_comm_create_args_t, flags, 8, 4) \
    F(hashattn_comm_create_args_t, timeout_ms, 12, 4) \
    F(hashattn_comm_create_args_t, unique_id, 16, 8) \
    S(hashattn_comm_bind_args_t, 24, 8) \
    F(hashattn_comm_bind_args_t, struct_size, 0, 8) \
    F(hashattn_comm_bind_args_t, flags, 8, 4) \
    F(hashattn_comm_bind_args_t, timeout_ms, 12, 4) \
    F(hashattn_comm_bind_args_t, nccl_comm, 16, 8) \
    S(hashattn_all_reduce_args_t, 32, 8) \
    F(hashattn_all_reduce_args_t, struct_size, 0, 8) \
    F(hashattn_all_reduce_args_t, flags, 8, 4) \
    F(hashattn_all_reduce_args_t, tensor, 16, 8) \
    F(hashattn_all_reduce_args_t, stream, 24, 8) \
    S(hashattn_api_t, 152, 8) \
    F(hashattn_api_t, struct_size, 0, 8) \
    F(hashattn_api_t, abi_major, 8, 4) \
    F(hashattn_api_t, abi_minor, 12, 4) \
    F(hashattn_api_t, version, 16, 8) \
    F(hashattn_api_t, status_string, 24, 8) \
    F(hashattn_api_t, last_error, 32, 8) \
    F(hashattn_api_t, context_create, 40, 8) \
    F(hashattn_api_t, context_destroy, 48, 8) \
    F(hashattn_api_t, weights_bind, 56, 8) \
    F(hashattn_api_t, weights_load, 64, 8) \
    F(hashattn_api_t, workspace_size, 72, 8) \
    F(hashattn_api_t, cache_write, 80, 8) \
    F(hashattn_api_t, decode, 88, 8) \
    F(hashattn_api_t, prefill, 96, 8) \
    F(hashattn_api_t, hash, 104, 8) \
    F(hashattn_api_t, comm_unique_id, 112, 8) \
    F(hashattn_api_t, comm_create, 120, 8) \
    F(hashattn_api_t, comm_bind, 128, 8) \
    F(hashattn_api_t, comm_abort, 136, 8) \
    F(hashattn_api_t, all_reduce, 144, 8) \
    S(DLDataType, 4, 2) \
    F(DLDataType, code, 0, 1) \
    F(DLDataType, bits, 1, 1) \
    F(DLDataType, lanes, 2, 2) \
    S(DLDevice, 8, 4) \
    F(DLDevice, device_type, 0, 4) \
    F(DLDevice, device_id, 4, 4) \
    S(DLTensor, 48, 8) \
    F(DLTensor, data, 0, 8) \
    F(DLTensor, device, 8, 8) \
    F(DLTensor, ndim, 16, 4) \
    F(DLTensor, dtype, 20, 4) \
    F(DLTensor, shape, 24, 8) \
    F(DLTensor, strides, 32, 8) \
    F(DLTensor, byte_offset, 40, 8) \
    S(hashattn_status_t, 4, 4)

#define HA_CONSTANT_TABLE(V) \
    V(HASHATTN_ABI_MAJOR, 1) \
    V(HASHATTN_ABI_MINOR, 2) \
    V(HASHATTN_STATUS_OK, 0) \
    V(HASHATTN_STATUS_INVALID_ARGUMENT, 1) \
    V(HASHATTN_STATUS_UNSUPPORTED, 2) \
    V(HASHATTN_STATUS_OUT_OF_MEMORY, 3) \
    V(HASHATTN_STATUS_WORKSPACE_TOO_SMALL, 4) \
    V(HASHATTN_STATUS_NOT_READY, 5) \
    V(HASHATTN_STATUS_IO_ERROR, 6) \
    V(HASHATTN_STATUS_FORMAT_ERROR, 7) \
    V(HASHATTN_STATUS_DEVICE_ERROR, 8) \
    V(HASHATTN_STATUS_INTERNAL, 9) \
    V(HASHATTN_STATUS_COMM_ERROR, 10) \
    V(HASHATTN_KV_LAYOUT_NHD, 0) \
    V(HASHATTN_KV_LAYOUT_HND, 1) \
    V(HASHATTN_SELECTION_PER_HEAD, 0) \
    V(HASHATTN_SELECTION_GROUP, 1) \
    V(HASHATTN_SIGNATURE_PER_QUERY_HEAD, 0) \
    V(HASHATTN_SIGNATURE_PER_KV_HEAD, 1) \
    V(HASHATTN_HASH_QUERY, 0) \
    V(HASHATTN_HASH_KEY, 1) \
    V(HASHATTN_OP_CACHE_WRITE, 0) \
    V(HASHATTN_OP_DECODE, 1) \
    V(HASHATTN_OP_PREFILL, 2) \
    V(HASHATTN_OP_HASH, 3) \
    V(HASHATTN_CACHE_WRITE_SIGNATURES_ONLY, 1) \
    V(HASHATTN_DECODE_DENSE, 1) \
    V(HASHATTN_DECODE_TP_SHARDED, 2) \
    V(HASHATTN_COMM_ID_BYTES, 128) \
    V(kDLCPU, 1) \
    V(kDLCUDA, 2) \
    V(kDLCUDAHost, 3) \
    V(kDLCUDAManaged, 13) \
    V(kDLInt, 0) \
    V(kDLUInt, 1) \
    V(kDLFloat, 2) \
    V(kDLBfloat, 4)

#endif /* HASHATTN_TESTS_ABI_LAYOUT_TABLE_H */
