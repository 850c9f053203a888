# ctest package_consumer_build: `cmake --install` the client library (component dev) into a
# fresh prefix, then configure and build consumer/ against that prefix only
# (find_package(iris CONFIG REQUIRED), target iris::client).
# -DBUILD_DIR=<Iris build tree> -DWORK_DIR=<scratch> -DCONSUMER_SOURCE=<consumer/>
# -DGENERATOR=<generator> [-DLAUNCHER=<compiler launcher>]
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (exit ${rc}):\n${out}")
  endif()
endfunction()

run("cmake --install (component dev)"
    ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix --component dev)

# Only the public headers: nothing of src/ (common/, net/, ...) is installed, every quoted
# include of an installed header is another installed header, and the API exposes no
# untyped pointers (void*) and no test-only members (raw writes: client/connection_test_access.h).
file(GLOB_RECURSE headers RELATIVE ${WORK_DIR}/prefix/include ${WORK_DIR}/prefix/include/*)
if(NOT headers)
  message(FATAL_ERROR "cmake --install --component dev installed no headers")
endif()
foreach(h ${headers})
  if(NOT h MATCHES "^iris/")
    message(FATAL_ERROR "installed header outside include/iris/: ${h}")
  endif()
  file(STRINGS ${WORK_DIR}/prefix/include/${h} bad REGEX "void ?\\*|SendRaw")
  if(bad)
    message(FATAL_ERROR "${h} exposes an untyped pointer or a test-only member: ${bad}")
  endif()
  file(STRINGS ${WORK_DIR}/prefix/include/${h} includes REGEX "^#include \"")
  foreach(line ${includes})
    string(REGEX REPLACE "^#include \"([^\"]+)\".*" "\\1" inc "${line}")
    if(NOT EXISTS ${WORK_DIR}/prefix/include/${inc})
      message(FATAL_ERROR "${h} includes \"${inc}\", which is not installed")
    endif()
  endforeach()
endforeach()

set(launcher)
if(LAUNCHER)
  set(launcher -DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER})
endif()
run("configuring the consumer"
    ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE} -B ${WORK_DIR}/build -G ${GENERATOR}
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix ${launcher})
run("building the consumer" ${CMAKE_COMMAND} --build ${WORK_DIR}/build)
message(STATUS "consumer built: ${WORK_DIR}/build/iris-consumer")
