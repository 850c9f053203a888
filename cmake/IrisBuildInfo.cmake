# The version and git commit compiled into the binaries (`--version`, iris_build_info).
# Target iris_build_info: an interface library whose include path holds iris_build_info.h.
# The commit is read at configure time; CMake re-configures when the checkout's HEAD moves
# (HEAD's reflog is a configure dependency), so a new commit is picked up by the next build.
# Without git or outside a checkout the commit is "unknown" and the build still succeeds.
set(IRIS_GIT_COMMIT "unknown")
find_package(Git QUIET)
if(GIT_FOUND)
  execute_process(
    COMMAND ${GIT_EXECUTABLE} rev-parse --short=12 HEAD
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    OUTPUT_VARIABLE iris_commit
    ERROR_QUIET
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE iris_git_rc)
  if(iris_git_rc EQUAL 0 AND NOT iris_commit STREQUAL "")
    set(IRIS_GIT_COMMIT ${iris_commit})
    execute_process(
      COMMAND ${GIT_EXECUTABLE} rev-parse --path-format=absolute --git-path logs/HEAD
      WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
      OUTPUT_VARIABLE iris_head_log
      ERROR_QUIET
      OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(iris_head_log AND EXISTS ${iris_head_log})
      set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${iris_head_log})
    endif()
  endif()
endif()
set(IRIS_BUILD_INFO_DIR ${CMAKE_BINARY_DIR}/generated)
configure_file(${PROJECT_SOURCE_DIR}/cmake/build_info.h.in
               ${IRIS_BUILD_INFO_DIR}/iris_build_info.h @ONLY)
add_library(iris_build_info INTERFACE)
target_include_directories(iris_build_info INTERFACE ${IRIS_BUILD_INFO_DIR})
