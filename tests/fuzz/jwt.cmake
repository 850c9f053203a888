# JWT verifier fuzz target (tests/fuzz/jwt_fuzz.cc). Meant to be include()d from
# tests/fuzz/CMakeLists.txt, which is only added when IRIS_FUZZ is ON (clang; the top-level
# CMakeLists then compiles everything with -fsanitize=fuzzer-no-link,address,undefined).
#
# The ctest entry runs a bounded, seeded campaign from the checked-in seeds
# (tests/fuzz/corpus/jwt/); new inputs go to a directory in the build tree, never into the
# source tree. A longer campaign by hand:
#   build/tests/fuzz/jwt_fuzz -dict=tests/fuzz/jwt.dict -max_len=4200 -max_total_time=600 \
#     /tmp/jwt-corpus tests/fuzz/corpus/jwt
add_executable(jwt_fuzz ${CMAKE_CURRENT_LIST_DIR}/jwt_fuzz.cc)
target_compile_options(jwt_fuzz PRIVATE ${IRIS_WARNINGS})
target_link_libraries(jwt_fuzz PRIVATE iris_auth)
target_link_options(jwt_fuzz PRIVATE -fsanitize=fuzzer)
set(IRIS_JWT_FUZZ_WORK ${CMAKE_CURRENT_BINARY_DIR}/jwt_fuzz_corpus)
file(MAKE_DIRECTORY ${IRIS_JWT_FUZZ_WORK})
add_test(NAME jwt_fuzz
  COMMAND jwt_fuzz -seed=1 -runs=100000 -max_len=4200
    -dict=${CMAKE_CURRENT_LIST_DIR}/jwt.dict
    ${IRIS_JWT_FUZZ_WORK} ${CMAKE_CURRENT_LIST_DIR}/corpus/jwt)
set_tests_properties(jwt_fuzz PROPERTIES LABELS fuzz TIMEOUT 300)
