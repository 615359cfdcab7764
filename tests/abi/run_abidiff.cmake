# run_abidiff.cmake - the abi_abidiff test: the built library against
# abi/baseline.abi (see abicheck.cmake for the rules).
#   cmake -DLIB=<libhashattn.so.1> -DBASELINE=abi/baseline.abi
#         -DSUPPRESSIONS=abi/suppressions.abignore [-DABIDIFF=abidiff] -P run_abidiff.cmake
cmake_minimum_required(VERSION 3.25)
foreach(v LIB BASELINE SUPPRESSIONS)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run_abidiff.cmake: -D${v}= is required")
  endif()
endforeach()
if(NOT ABIDIFF)
  find_program(ABIDIFF abidiff)
  if(NOT ABIDIFF)
    message(FATAL_ERROR "abidiff not found (Debian: abigail-tools) FAILED")
  endif()
endif()
# abidiff needs DWARF: a build without -g (CMAKE_BUILD_TYPE=Release) cannot be
# compared. Say so and let CTest mark the test skipped (SKIP_REGULAR_EXPRESSION).
find_program(READELF NAMES readelf llvm-readelf)
if(READELF)
  execute_process(COMMAND ${READELF} -S --wide "${LIB}" OUTPUT_VARIABLE sections ERROR_QUIET)
  if(NOT sections MATCHES "\\.debug_info")
    message("SKIPPED: ${LIB} has no debug info; build with RelWithDebInfo or Debug to compare its ABI")
    return()
  endif()
endif()
include(${CMAKE_CURRENT_LIST_DIR}/abicheck.cmake)
ha_abi_compare(${ABIDIFF} ${BASELINE} ${SUPPRESSIONS} ${LIB} problems)
if(problems)
  message("${problems}")
  message("To accept a deliberate, compatible change (a new minor), regenerate the baseline with "
          "scripts/abi-baseline and review the diff of abi/baseline.abi.")
  message(FATAL_ERROR "abidiff ${BASELINE} vs ${LIB}: ABI changed FAILED")
endif()
message("abidiff ${BASELINE} vs ${LIB}: no incompatible change OK")
