# JWT verifier fuzz target (jwt_fuzz.cc), include()d from tests/fuzz/CMakeLists.txt, which is
# only added when IRIS_FUZZ is ON (clang; the top-level CMakeLists.txt then compiles
# everything with -fsanitize=fuzzer-no-link,address,undefined).
#
# The ctest entry is a bounded, seeded campaign (100,000 inputs, about 30 s) from the
# committed seeds in corpus/jwt/; new inputs go to a scratch directory in the build tree,
# never into the source tree, and crash inputs land in the build directory. A longer
# campaign by hand:
#   <build>/tests/fuzz/iris_jwt_fuzz -dict=tests/fuzz/jwt.dict -max_len=4200 \
#     -max_total_time=600 /tmp/jwt-corpus tests/fuzz/corpus/jwt
add_executable(iris_jwt_fuzz ${CMAKE_CURRENT_LIST_DIR}/jwt_fuzz.cc)
target_compile_options(iris_jwt_fuzz PRIVATE ${IRIS_WARNINGS} -fsanitize=fuzzer)
target_link_options(iris_jwt_fuzz PRIVATE -fsanitize=fuzzer)
target_link_libraries(iris_jwt_fuzz PRIVATE iris_auth)

set(IRIS_JWT_FUZZ_WORK ${CMAKE_CURRENT_BINARY_DIR}/jwt_corpus_work)
file(MAKE_DIRECTORY ${IRIS_JWT_FUZZ_WORK})
add_test(NAME iris_jwt_fuzz
  COMMAND iris_jwt_fuzz -runs=100000 -seed=1 -timeout=10 -rss_limit_mb=2048 -max_len=4200
          -dict=${CMAKE_CURRENT_LIST_DIR}/jwt.dict -print_final_stats=1
          -artifact_prefix=${CMAKE_CURRENT_BINARY_DIR}/jwt-
          ${IRIS_JWT_FUZZ_WORK} ${CMAKE_CURRENT_LIST_DIR}/corpus/jwt)
set_tests_properties(iris_jwt_fuzz PROPERTIES LABELS fuzz TIMEOUT 180)
