# check_imports.cmake - the library's own objects call nothing that ends or
# prints the host's process: no abort, exit, assert or printf family among the
# undefined symbols of each object file of the `hashattn` target (the library's
# code, not the json-c it links statically: docs/abi-conformance.md says what
# json-c brings).
#   cmake -DOBJECTS="a.o|b.o|..." [-DNM=nm] -P check_imports.cmake
cmake_minimum_required(VERSION 3.25)
if(NOT DEFINED OBJECTS)
  message(FATAL_ERROR "check_imports.cmake: -DOBJECTS= is required")
endif()
if(NOT NM)
  find_program(NM nm REQUIRED)
endif()
set(forbidden abort exit _exit _Exit quick_exit __assert_fail __assert_perror_fail
    printf fprintf vprintf vfprintf dprintf __printf_chk __fprintf_chk __vfprintf_chk __vprintf_chk
    puts fputs putchar putc fputc perror fwrite)
string(REPLACE "|" ";" objects "${OBJECTS}")
set(bad "")
set(count 0)
foreach(o IN LISTS objects)
  execute_process(COMMAND ${NM} --undefined-only "${o}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "nm --undefined-only ${o}: ${err} FAILED")
  endif()
  math(EXPR count "${count} + 1")
  string(REPLACE "\n" ";" lines "${out}")
  foreach(l IN LISTS lines)
    if(l MATCHES "^ *U ([A-Za-z0-9_]+)(@.*)?$" AND CMAKE_MATCH_1 IN_LIST forbidden)
      get_filename_component(name "${o}" NAME)
      list(APPEND bad "${name}: ${CMAKE_MATCH_1}")
    endif()
  endforeach()
endforeach()
if(bad)
  foreach(b IN LISTS bad)
    message("  FORBIDDEN import: ${b}")
  endforeach()
  message(FATAL_ERROR "abi imports: the library's code ends or prints the process: FAILED")
endif()
message("abi imports: ${count} object files, none imports abort, exit, assert or printf: OK")
