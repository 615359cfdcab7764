# abicheck.cmake - the ABI comparison used by the abi_abidiff test and by the
# variant tests (included by run_abidiff.cmake and abi_variant.cmake).
#
# ha_abi_compare(<abidiff> <baseline.abi> <suppressions> <library> <result-var>)
#   sets <result-var> to "" when the library's ABI is the baseline's or only
#   appends data members at the end of the structs listed in the suppression
#   file, and to a description of the break otherwise. Two passes:
#
#   1. abidiff --leaf-changes-only with abi/suppressions.abignore must return 0.
#      This catches removals, insertions before the end, changed enumerator
#      values, added or removed symbols, and changes to any other type.
#   2. libabigail's has_data_member_inserted_at = end suppresses a struct's
#      change whenever no member was removed and the size did not shrink; it
#      does not look at members whose offset or type changed, so it would let
#      through a reordering of the function table, a retyped field or an
#      embedded struct that grew (hashattn_mlp_weights_t inside
#      hashattn_weights_bind_args_t). So abidiff runs again without
#      suppressions and every leaf change it reports must be a pure append: a
#      listed struct whose only changes are its size and data members inserted
#      at offsets >= its old size.
#
# abidiff's exit status is a bit field: 1 error, 2 usage error, 4 ABI change,
# 8 incompatible ABI change; any non-zero status of pass 1 fails.
cmake_minimum_required(VERSION 3.25)

function(ha_abi_compare abidiff baseline suppressions lib result_var)
  set(common --leaf-changes-only --no-show-locs --fail-no-debug-info)
  execute_process(COMMAND ${abidiff} ${common} --suppressions ${suppressions} ${baseline} ${lib}
    RESULT_VARIABLE rc1 OUTPUT_VARIABLE out1 ERROR_VARIABLE err1)
  if(NOT rc1 EQUAL 0)
    set(${result_var} "pass 1 (abidiff with ${suppressions}) exit status ${rc1}:\n${out1}${err1}" PARENT_SCOPE)
    return()
  endif()

  execute_process(COMMAND ${abidiff} ${common} ${baseline} ${lib}
    RESULT_VARIABLE rc2 OUTPUT_VARIABLE out2 ERROR_VARIABLE err2)
  if(rc2 EQUAL 0)
    set(${result_var} "" PARENT_SCOPE)
    return()
  endif()
  math(EXPR tool_error "${rc2} & 3")
  if(NOT tool_error EQUAL 0)
    set(${result_var} "pass 2: abidiff failed (exit status ${rc2}): ${err2}" PARENT_SCOPE)
    return()
  endif()

  # The structs that may grow: the `name =` lines of the suppression file.
  file(STRINGS ${suppressions} supp_lines REGEX "^[ \t]*name[ \t]*=")
  set(appendable "")
  foreach(l IN LISTS supp_lines)
    string(REGEX REPLACE "^[ \t]*name[ \t]*=[ \t]*([A-Za-z0-9_]+).*$" "\\1" n "${l}")
    list(APPEND appendable "${n}")
  endforeach()

  # Line by line without CMake lists (report lines may hold ';', '[' or ']').
  set(problems "")
  set(current "")
  set(old_size -1)
  set(rest "${out2}\n")
  while(NOT rest STREQUAL "")
    string(FIND "${rest}" "\n" nl)
    string(SUBSTRING "${rest}" 0 ${nl} l)
    math(EXPR nl "${nl} + 1")
    string(SUBSTRING "${rest}" ${nl} -1 rest)
    if(l STREQUAL "" OR l MATCHES "^(Leaf changes summary|Changed leaf types summary)")
      continue()
    elseif(l MATCHES "^Removed/Changed/Added (functions|variables) summary: ")
      if(NOT l MATCHES ": 0 Removed[^,]*, 0 Changed[^,]*, 0 Added")
        string(APPEND problems "  ${l}\n")
      endif()
    elseif(l MATCHES "^'struct ([A-Za-z0-9_]+)' changed:$")
      set(current "${CMAKE_MATCH_1}")
      set(old_size -1)
      if(NOT current IN_LIST appendable)
        string(APPEND problems "  ${l} (not an appendable struct)\n")
      endif()
    elseif(current AND l MATCHES "^  type size changed from ([0-9]+) to ([0-9]+) \\(in bits\\)$")
      set(old_size ${CMAKE_MATCH_1})
      if(CMAKE_MATCH_2 LESS CMAKE_MATCH_1)
        string(APPEND problems "  struct ${current}: ${l}\n")
      endif()
    elseif(current AND l MATCHES "^  [0-9]+ data member insertions?:$")
      continue()
    elseif(current AND l MATCHES "^    '.*', at offset ([0-9]+) \\(in bits\\)$")
      if(old_size LESS 0 OR CMAKE_MATCH_1 LESS old_size)
        string(APPEND problems "  struct ${current}: inserted before the end: ${l}\n")
      endif()
    else()
      string(APPEND problems "  ${current}: ${l}\n")
    endif()
  endwhile()
  if(problems)
    set(${result_var} "pass 2 (strict append-only check of the unsuppressed leaf report):\n${problems}" PARENT_SCOPE)
  else()
    set(${result_var} "" PARENT_SCOPE)
  endif()
endfunction()
