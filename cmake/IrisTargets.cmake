# Target helpers (STYLE.md "Build hygiene"): one per target kind, so every project target
# gets the same warnings and include paths.

# -Wno-restrict: GCC 12 reports false positives inside libstdc++ string concatenation (GCC bug 105329).
set(IRIS_WARNINGS -Wall -Wextra -Werror -Wshadow -Wnon-virtual-dtor -Wno-missing-field-initializers $<$<CXX_COMPILER_ID:GNU>:-Wno-restrict>)

# iris_library(NAME SRCS a.cc b.cc DEPS other libs)
function(iris_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_library(iris_${name} STATIC ${ARG_SRCS})
  # Build-tree paths only: the installed client library's targets (IrisInstall.cmake) carry
  # the install's include/ instead.
  target_include_directories(iris_${name} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/src>
                                                 $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>)
  target_compile_options(iris_${name} PRIVATE ${IRIS_WARNINGS})
  target_link_libraries(iris_${name} PUBLIC ${ARG_DEPS})
endfunction()

# iris_executable(NAME SRCS ... DEPS ...)
function(iris_executable name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_compile_options(${name} PRIVATE ${IRIS_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
endfunction()

# iris_test(NAME SRCS ... DEPS ... LABEL unit|property|integration|chaos|fuzz TIMEOUT seconds
#           [BOTH_SHAPES] [SANITIZE])
# BOTH_SHAPES registers the suite a second time, as NAME_edge_processes, with every server
# the harness starts run as a node of two edge processes (IRIS_TEST_EDGE_PROCESSES=2, see
# tests/integration/harness/server_process.cc): limits and metrics must mean the same in
# both shapes.
# SANITIZE: an integration or chaos suite that `make test-sanitize` also runs (label
# "sanitize", with irisd and the tools built under ASan + UBSan). Every unit and property
# suite is in that set anyway; the target iris_sanitize_set builds the set.
function(iris_test name)
  cmake_parse_arguments(ARG "BOTH_SHAPES;SANITIZE" "LABEL;TIMEOUT" "SRCS;DEPS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 120)
  endif()
  add_executable(${name} ${ARG_SRCS})
  target_compile_options(${name} PRIVATE ${IRIS_WARNINGS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  add_test(NAME ${name} COMMAND ${name} --gtest_brief=1)
  set(labels "${ARG_LABEL}")
  if(ARG_SANITIZE)
    list(APPEND labels sanitize)
  endif()
  if(ARG_SANITIZE OR ARG_LABEL MATCHES "^(unit|property)$")
    add_dependencies(iris_sanitize_set ${name})
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${labels}" TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT "IRIS_BUILD_DIR=${PROJECT_BINARY_DIR};IRIS_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  if(ARG_BOTH_SHAPES)
    add_test(NAME ${name}_edge_processes COMMAND ${name} --gtest_brief=1)
    set_tests_properties(${name}_edge_processes PROPERTIES LABELS "${ARG_LABEL}"
      TIMEOUT ${ARG_TIMEOUT}
      ENVIRONMENT "IRIS_BUILD_DIR=${PROJECT_BINARY_DIR};IRIS_SOURCE_DIR=${PROJECT_SOURCE_DIR};IRIS_TEST_EDGE_PROCESSES=2")
  endif()
endfunction()
