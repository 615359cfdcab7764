# abi_variant.cmake - proves that the abi_abidiff check bites: builds a
# variant of the library from the same sources with one planted change to the
# public header (and, where the change needs it, to plugin/api.c or
# plugin/internal.h), compares it with abi/baseline.abi through
# ha_abi_compare (abicheck.cmake) and expects the verdict EXPECT (pass|fail).
#
# The variant's header copy has the header's own offsetof static assertions
# removed, so that the comparison is tested on its own; whether those
# assertions would have caught the change is printed for information.
#
#   cmake -DVARIANT=<name> -DEXPECT=pass|fail -DROOT=<repo> -DOUT=<dir>
#         -DCC=<C compiler> -DBASELINE=... -DSUPPRESSIONS=... [-DABIDIFF=...]
#         [-DDLPACK_INC=...] "-DJSONC_CFLAGS=..." "-DJSONC_LIBS=..." -P abi_variant.cmake
#
# Variants (each a minimal compile, -O0 -g, about a second):
#   control       no change                                       -> pass
#   append_field  a field after decode_args.query_signatures      -> pass (a minor)
#   append_fn     a function pointer at the end of the table     -> pass (a minor)
#   private_ctx   a field in the opaque struct hashattn_context   -> pass (not ABI)
#   append_enum   a new status code at the end of the enum        -> pass (a minor)
#   insert_field  a field between decode_args.layer and .query    -> fail
#   remove_fn     the table's decode pointer removed              -> fail
#   swap_fn       the table's decode and prefill pointers swapped -> fail
#   retype_field  hash_args.side int32_t -> int64_t               -> fail
#   grow_mlp      a field appended to the embedded mlp_weights    -> fail
#   renumber_enum HASHATTN_STATUS_IO_ERROR 6 -> 16                -> fail
#   export_extra  hashattn_get_api plus a second exported symbol  -> fail
cmake_minimum_required(VERSION 3.25)
foreach(v VARIANT EXPECT ROOT OUT CC BASELINE SUPPRESSIONS)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "abi_variant.cmake: -D${v}= is required")
  endif()
endforeach()
if(NOT ABIDIFF)
  find_program(ABIDIFF abidiff)
endif()
include(${CMAKE_CURRENT_LIST_DIR}/abicheck.cmake)

set(vdir "${OUT}/${VARIANT}")
file(REMOVE_RECURSE "${vdir}")
file(MAKE_DIRECTORY "${vdir}/hashattn" "${vdir}/plugin")
file(READ "${ROOT}/abi/hashattn/hashattn.h" header)
file(READ "${ROOT}/plugin/api.c" api_c)
file(READ "${ROOT}/plugin/internal.h" internal_h)

# patch(<var> <old> <new>): replace exactly one occurrence, or stop: a patch
# that no longer applies must not pass silently.
macro(patch var old new)
  string(FIND "${${var}}" "${old}" _at)
  if(_at EQUAL -1)
    message(FATAL_ERROR "variant ${VARIANT}: the patch text is not in ${var} any more:\n${old}\n"
                        "(update abi_variant.cmake to the new sources) FAILED")
  endif()
  string(REPLACE "${old}" "${new}" ${var} "${${var}}")
endmacro()

set(extra_src "")
if(VARIANT STREQUAL "control")
elseif(VARIANT STREQUAL "append_field")
  patch(header "    const DLTensor *query_signatures; /* [num_seqs, Hq] uint32 */\n} hashattn_decode_args_t;"
               "    const DLTensor *query_signatures; /* [num_seqs, Hq] uint32 */\n    int64_t appended_in_a_minor;\n} hashattn_decode_args_t;")
elseif(VARIANT STREQUAL "append_fn")
  patch(header "                                    const hashattn_all_reduce_args_t *args);\n} hashattn_api_t;"
               "                                    const hashattn_all_reduce_args_t *args);\n    int (*appended_fn)(void);\n} hashattn_api_t;")
elseif(VARIANT STREQUAL "private_ctx")
  patch(internal_h "    char last_error[HA_ERROR_LEN];\n"
                   "    char last_error[HA_ERROR_LEN];\n    int64_t new_private_field;\n")
elseif(VARIANT STREQUAL "append_enum")
  patch(header "    HASHATTN_STATUS_COMM_ERROR = 10 " "    HASHATTN_STATUS_COMM_ERROR = 10,\n    HASHATTN_STATUS_NEW_IN_A_MINOR = 11 ")
elseif(VARIANT STREQUAL "insert_field")
  patch(header "    int32_t layer;\n    const DLTensor *query;           /* [num_seqs, Hq, D], dtype */"
               "    int32_t layer;\n    int32_t inserted;\n    const DLTensor *query;           /* [num_seqs, Hq, D], dtype */")
elseif(VARIANT STREQUAL "remove_fn")
  patch(header "    hashattn_status_t (*decode)(hashattn_context_t *ctx,\n                                const hashattn_decode_args_t *args);\n" "")
  patch(api_c "    .decode = ha_tp_decode,\n" "")
elseif(VARIANT STREQUAL "swap_fn")
  patch(header "    hashattn_status_t (*decode)(hashattn_context_t *ctx,\n                                const hashattn_decode_args_t *args);\n    hashattn_status_t (*prefill)(hashattn_context_t *ctx,\n                                 const hashattn_prefill_args_t *args);\n"
               "    hashattn_status_t (*prefill)(hashattn_context_t *ctx,\n                                 const hashattn_prefill_args_t *args);\n    hashattn_status_t (*decode)(hashattn_context_t *ctx,\n                                const hashattn_decode_args_t *args);\n")
elseif(VARIANT STREQUAL "retype_field")
  patch(header "    int32_t side;            /* hashattn_hash_side_t */" "    int64_t side;            /* hashattn_hash_side_t */")
elseif(VARIANT STREQUAL "grow_mlp")
  patch(header "    const DLTensor *b3; /* [L, H, 32] */\n} hashattn_mlp_weights_t;"
               "    const DLTensor *b3; /* [L, H, 32] */\n    const DLTensor *w4;\n} hashattn_mlp_weights_t;")
elseif(VARIANT STREQUAL "renumber_enum")
  patch(header "HASHATTN_STATUS_IO_ERROR = 6," "HASHATTN_STATUS_IO_ERROR = 16,")
elseif(VARIANT STREQUAL "export_extra")
  # A second public function in a new translation unit, exported through the
  # version script's HASHATTN_1.0 node.
  file(WRITE "${vdir}/extra.c" "#include <hashattn/hashattn.h>\nHASHATTN_EXPORT int hashattn_extra(void);\nHASHATTN_EXPORT int hashattn_extra(void) { return 1; }\n")
  set(extra_src "${vdir}/extra.c")
  file(READ "${ROOT}/abi/hashattn.map" map)
  string(REPLACE "hashattn_get_api;" "hashattn_get_api;\n    hashattn_extra;" map "${map}")
  file(WRITE "${vdir}/hashattn.map" "${map}")
else()
  message(FATAL_ERROR "abi_variant.cmake: unknown VARIANT ${VARIANT}")
endif()
set(map_file "${ROOT}/abi/hashattn.map")
if(EXISTS "${vdir}/hashattn.map")
  set(map_file "${vdir}/hashattn.map")
endif()

# With the header's own static assertions (for the report only).
file(WRITE "${vdir}/asserts/hashattn/hashattn.h" "${header}")
file(WRITE "${vdir}/asserts/tu.c" "#include <hashattn/hashattn.h>\n")
set(inc_dlpack "")
if(DLPACK_INC)
  set(inc_dlpack "-I${DLPACK_INC}")
endif()
execute_process(COMMAND ${CC} -std=c11 -fsyntax-only -I${vdir}/asserts ${inc_dlpack} ${vdir}/asserts/tu.c
  RESULT_VARIABLE assert_rc OUTPUT_QUIET ERROR_QUIET)
if(assert_rc EQUAL 0)
  set(assert_verdict "not caught by the header's static assertions")
else()
  set(assert_verdict "caught by the header's static assertions too")
endif()

string(REGEX REPLACE "\nHASHATTN_STATIC_ASSERT_\\([^\n]*" "" header "${header}")
file(WRITE "${vdir}/hashattn/hashattn.h" "${header}")
file(WRITE "${vdir}/plugin/api.c" "${api_c}")
file(WRITE "${vdir}/plugin/internal.h" "${internal_h}")

file(GLOB plugin_src "${ROOT}/plugin/*.c")
file(GLOB cpu_src "${ROOT}/kernels/cpu/*.c")
file(GLOB tp_src "${ROOT}/multi_gpu/*.c")
list(APPEND cpu_src ${tp_src})
list(FILTER plugin_src EXCLUDE REGEX "/api\\.c$")
separate_arguments(jsonc_cflags UNIX_COMMAND "${JSONC_CFLAGS}")
separate_arguments(jsonc_libs UNIX_COMMAND "${JSONC_LIBS}")
set(lib "${vdir}/libhashattn.so.1")
execute_process(
  COMMAND ${CC} -shared -fPIC -g -O0 -std=c11 -fvisibility=hidden
          -I${vdir} -I${ROOT} ${inc_dlpack} ${jsonc_cflags} -DHASHATTN_BUILDING_LIBRARY
          ${vdir}/plugin/api.c ${plugin_src} ${cpu_src} ${extra_src}
          -o ${lib} -Wl,-soname,libhashattn.so.1 -Wl,--version-script=${map_file} -Wl,--no-undefined
          ${jsonc_libs} -lm
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "variant ${VARIANT}: the build failed:\n${out}${err}\nvariant ${VARIANT} FAILED")
endif()

ha_abi_compare(${ABIDIFF} ${BASELINE} ${SUPPRESSIONS} ${lib} problems)
if(problems)
  set(verdict fail)
  message("abidiff report for variant ${VARIANT}:\n${problems}")
else()
  set(verdict pass)
endif()
if(NOT verdict STREQUAL EXPECT)
  message(FATAL_ERROR "variant ${VARIANT}: the ABI check says ${verdict}, expected ${EXPECT} "
                      "(${assert_verdict}) FAILED")
endif()
message("variant ${VARIANT}: the ABI check says ${verdict} as expected (${assert_verdict}) OK")
