# ctest: deploy/systemd/irisd.service passes `systemd-analyze verify` with no diagnostics
# and keeps the settings docs/operations.md promises.
# -DUNIT=<the unit> -DIRISD=<built irisd> -DWORK_DIR=<scratch dir> -DANALYZE=<systemd-analyze>
#
# verify needs ExecStart's binary to exist, so it checks a copy whose ExecStart names the
# built irisd. verify exits 0 on unknown keys and unparsable values (it only warns), so any
# output at all fails the test.
file(READ ${UNIT} unit)

foreach(required
    "ExecStart=/usr/bin/irisd --config /etc/iris/iris.toml"
    "Restart=on-failure" "LimitNOFILE=" "TimeoutStopSec=" "ProtectSystem=strict"
    "ReadWritePaths=/var/lib/iris" "NoNewPrivileges=yes" "PrivateTmp=yes" "User=iris")
  string(FIND "${unit}" "\n${required}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${UNIT}: no line starting with '${required}'")
  endif()
endforeach()

# The stop timeout must exceed irisd's default shutdown grace (5000 ms), else systemd kills
# a node still draining.
string(REGEX MATCH "\nTimeoutStopSec=([0-9]+)s?\n" m "${unit}")
if(NOT CMAKE_MATCH_1 OR CMAKE_MATCH_1 LESS_EQUAL 5)
  message(FATAL_ERROR "${UNIT}: TimeoutStopSec must be a number of seconds above 5 "
                      "(--shutdown-grace-ms defaults to 5000)")
endif()

string(REPLACE "ExecStart=/usr/bin/irisd " "ExecStart=${IRISD} " copy "${unit}")
file(MAKE_DIRECTORY ${WORK_DIR})
file(WRITE ${WORK_DIR}/irisd.service "${copy}")
execute_process(COMMAND ${ANALYZE} verify ${WORK_DIR}/irisd.service
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0 OR NOT out STREQUAL "")
  message(FATAL_ERROR "systemd-analyze verify (exit ${rc}):\n${out}")
endif()
message(STATUS "systemd-analyze verify: clean")
