# check-docs.cmake - keep README.md and docs/ honest (run with cmake -P).
#
#   cmake -DROOT=<repo> -P examples/check-docs.cmake            check
#   cmake -DROOT=<repo> -DUPDATE=ON -P examples/check-docs.cmake  rewrite README's block
#
# 1. The fenced block between the markers below in README.md is examples/host.c,
#    byte for byte.
# 2. Every relative Markdown link in README.md and docs/*.md names a file or
#    folder that exists.
# Ends with one line "check-docs: ... OK" or "check-docs: ... FAILED".

cmake_minimum_required(VERSION 3.25)
if(NOT ROOT)
  set(ROOT "${CMAKE_CURRENT_LIST_DIR}/..")
endif()
get_filename_component(ROOT "${ROOT}" ABSOLUTE)

set(_begin "<!-- begin examples/host.c -->\n```c\n")
set(_end "```\n<!-- end examples/host.c -->")
set(_errors 0)

function(_fail msg)
  message(STATUS "check-docs: ${msg}")
  math(EXPR _n "${_errors} + 1")
  set(_errors ${_n} PARENT_SCOPE)
endfunction()

file(READ "${ROOT}/README.md" _readme)
file(READ "${ROOT}/examples/host.c" _host)

string(FIND "${_readme}" "${_begin}" _b)
string(FIND "${_readme}" "${_end}" _e)
if(_b LESS 0 OR _e LESS 0 OR _e LESS _b)
  _fail("README.md has no block between '<!-- begin examples/host.c -->' and '<!-- end examples/host.c -->'")
else()
  string(LENGTH "${_begin}" _bl)
  math(EXPR _start "${_b} + ${_bl}")
  math(EXPR _len "${_e} - ${_start}")
  string(SUBSTRING "${_readme}" ${_start} ${_len} _block)
  if(NOT _block STREQUAL _host)
    if(UPDATE)
      string(SUBSTRING "${_readme}" 0 ${_start} _head)
      string(SUBSTRING "${_readme}" ${_e} -1 _tail)
      file(WRITE "${ROOT}/README.md" "${_head}${_host}${_tail}")
      message(STATUS "check-docs: README.md block rewritten from examples/host.c")
    else()
      _fail("README.md's host example differs from examples/host.c (refresh: cmake -DROOT=. -DUPDATE=ON -P examples/check-docs.cmake)")
    endif()
  endif()
endif()

file(GLOB _docs "${ROOT}/docs/*.md")
set(_links 0)
foreach(_md "${ROOT}/README.md" ${_docs})
  get_filename_component(_dir "${_md}" DIRECTORY)
  file(READ "${_md}" _text)
  # Links inside fenced code are not links: drop the fences' contents first.
  string(REGEX REPLACE "```[^`]*```" "" _text "${_text}")
  # "[" and "]" would confuse CMake's list splitting: mark links without them.
  string(REPLACE "](" "<link>(" _text "${_text}")
  string(REGEX MATCHALL "<link>\\([^)# ]+[)#]" _found "${_text}")
  foreach(_l ${_found})
    string(REGEX REPLACE "^<link>\\(([^)# ]+)[)#]$" "\\1" _target "${_l}")
    if(_target MATCHES "^[a-z]+:")
      continue() # an absolute URL
    endif()
    math(EXPR _links "${_links} + 1")
    if(NOT EXISTS "${_dir}/${_target}")
      file(RELATIVE_PATH _rel "${ROOT}" "${_md}")
      _fail("${_rel} links to missing ${_target}")
    endif()
  endforeach()
endforeach()

if(_errors EQUAL 0)
  message(STATUS "check-docs: README block = examples/host.c, ${_links} links resolve OK")
else()
  message(STATUS "check-docs: ${_errors} problem(s) FAILED")
  message(FATAL_ERROR "check-docs failed")
endif()
