# ctest package_debs: `make package`'s three .deb files (CPack, DEB generator) built into a
# scratch directory, checked with dpkg-deb (contents, Depends, maintainer scripts), unpacked
# into a temporary root from which irisd, irisctl and iris run.
# -DBUILD_DIR=<Iris build tree> -DWORK_DIR=<scratch> -DVERSION=<project version>
# -DCPACK=<cpack> -DDPKG_DEB=<dpkg-deb>
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run what out_var)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (exit ${rc}):\n${out}\n${err}")
  endif()
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

function(expect_contains what text needle)
  string(FIND "${text}" "${needle}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${what}: '${needle}' not found in:\n${text}")
  endif()
endfunction()

run("cpack" out ${CPACK} -G DEB --config ${BUILD_DIR}/CPackConfig.cmake -B ${WORK_DIR}/out)
run("dpkg --print-architecture" arch dpkg --print-architecture)
string(STRIP "${arch}" arch)

set(files_irisd ./usr/bin/irisd ./usr/bin/irisctl ./usr/lib/systemd/system/irisd.service
    ./etc/iris/iris.toml ./usr/share/doc/iris/operations.md ./usr/share/doc/iris/LICENSE)
set(depends_irisd libssl3 librocksdb libprotobuf adduser)
set(control_irisd postinst prerm postrm conffiles)
set(files_iris-client ./usr/bin/iris)
set(depends_iris-client libssl3 libsqlite3 libsignal-protocol-c)
set(control_iris-client)
set(files_libiris-client-dev ./usr/include/iris/status.h ./usr/include/iris/client/client.h
    ./usr/include/iris/client/connection.h ./usr/include/iris/client/events.h
    /iris/libiris_client.a /iris/libiris_common.a /cmake/iris/iris-config.cmake
    /cmake/iris/iris-config-version.cmake /cmake/iris/iris-targets.cmake)
set(depends_libiris-client-dev libssl-dev libprotobuf-dev libsqlite3-dev
    libsignal-protocol-c-dev)
set(control_libiris-client-dev)

foreach(pkg irisd iris-client libiris-client-dev)
  set(deb ${WORK_DIR}/out/${pkg}_${VERSION}-1_${arch}.deb)
  if(NOT EXISTS ${deb})
    file(GLOB made ${WORK_DIR}/out/*.deb)
    message(FATAL_ERROR "no ${deb}; cpack made: ${made}")
  endif()
  run("dpkg-deb -c ${pkg}" contents ${DPKG_DEB} -c ${deb})
  foreach(f ${files_${pkg}})
    expect_contains("${pkg} contents" "${contents}" "${f}")
  endforeach()
  string(FIND "${contents}" "/include/common/" private)
  if(NOT private EQUAL -1)
    message(FATAL_ERROR "${pkg} ships a private header (include/common/):\n${contents}")
  endif()

  run("dpkg-deb -f ${pkg}" fields ${DPKG_DEB} -f ${deb} Package Version Depends)
  expect_contains("${pkg} control" "${fields}" "Package: ${pkg}\n")
  expect_contains("${pkg} control" "${fields}" "Version: ${VERSION}-1\n")
  if(NOT fields MATCHES "Depends: [^\n]+")
    message(FATAL_ERROR "${pkg}: empty Depends:\n${fields}")
  endif()
  foreach(d ${depends_${pkg}})
    expect_contains("${pkg} Depends" "${fields}" "${d}")
  endforeach()
  run("dpkg-deb -I ${pkg}" info ${DPKG_DEB} -I ${deb})
  foreach(c ${control_${pkg}})
    expect_contains("${pkg} control members" "${info}" " ${c}")
  endforeach()
  message(STATUS "${pkg}: ${fields}")
endforeach()

# irisd: /etc/iris/iris.toml is a conffile (an upgrade keeps the operator's edits); the
# postinst creates the user and /var/lib/iris, and starts nothing.
set(irisd_deb ${WORK_DIR}/out/irisd_${VERSION}-1_${arch}.deb)
file(MAKE_DIRECTORY ${WORK_DIR}/control)
run("dpkg-deb -e" ignored ${DPKG_DEB} -e ${irisd_deb} ${WORK_DIR}/control)
file(READ ${WORK_DIR}/control/conffiles conffiles)
expect_contains("irisd conffiles" "${conffiles}" "/etc/iris/iris.toml")
# The script's commands, comments left out.
file(STRINGS ${WORK_DIR}/control/postinst postinst REGEX "^[ \t]*[^# \t]")
string(JOIN "\n" postinst ${postinst})
expect_contains("irisd postinst" "${postinst}" "adduser --system")
expect_contains("irisd postinst" "${postinst}" "/var/lib/iris")
foreach(forbidden "systemctl start" "systemctl enable" "systemctl restart" "deb-systemd-invoke")
  string(FIND "${postinst}" "${forbidden}" at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "irisd postinst must not '${forbidden}' (chroots, containers, tests)")
  endif()
endforeach()
foreach(script postinst prerm postrm)
  run("sh -n ${script}" ignored sh -n ${WORK_DIR}/control/${script})
endforeach()

# The postinst run for a first install ("configure", no old version) with every command it
# may call replaced by a stub that logs its arguments: it creates the user (adduser
# --system, as getent finds none) and, at most, reloads systemd; it never starts, enables
# or restarts anything.
set(stubs ${WORK_DIR}/stubs)
file(MAKE_DIRECTORY ${stubs})
foreach(cmd adduser install systemctl chown chmod mkdir useradd deb-systemd-helper
            deb-systemd-invoke invoke-rc.d)
  file(WRITE ${stubs}/${cmd} "#!/bin/sh\necho \"${cmd} $*\" >> ${WORK_DIR}/calls\n")
  file(CHMOD ${stubs}/${cmd} PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE)
endforeach()
file(WRITE ${stubs}/getent "#!/bin/sh\nexit 2\n")
file(CHMOD ${stubs}/getent PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE)
file(WRITE ${WORK_DIR}/calls "")
run("postinst configure (stubbed)" ignored
    ${CMAKE_COMMAND} -E env "PATH=${stubs}:$ENV{PATH}" sh ${WORK_DIR}/control/postinst configure)
file(READ ${WORK_DIR}/calls calls)
expect_contains("postinst commands" "${calls}" "adduser --system --group")
string(REGEX MATCHALL "systemctl [^\n]*" systemctl_calls "${calls}")
foreach(c ${systemctl_calls})
  if(NOT c MATCHES "daemon-reload")
    message(FATAL_ERROR "postinst of a first install ran '${c}'")
  endif()
endforeach()
if(calls MATCHES "(deb-systemd|invoke-rc.d|useradd)")
  message(FATAL_ERROR "postinst ran unexpected commands:\n${calls}")
endif()

# Unpacked into a temporary root, the binaries run from there.
set(root ${WORK_DIR}/root)
foreach(pkg irisd iris-client)
  run("dpkg-deb -x ${pkg}" ignored ${DPKG_DEB} -x ${WORK_DIR}/out/${pkg}_${VERSION}-1_${arch}.deb
      ${root})
endforeach()
run("irisd --version" v ${root}/usr/bin/irisd --version)
expect_contains("irisd --version" "${v}" "${VERSION}")
run("irisctl --version" v ${root}/usr/bin/irisctl --version)
expect_contains("irisctl --version" "${v}" "${VERSION}")
run("iris --help" help ${root}/usr/bin/iris --help)
expect_contains("iris --help" "${help}" "send")
run("irisd --check-config" ignored ${root}/usr/bin/irisd --check-config ${root}/etc/iris/iris.toml)
file(READ ${root}/usr/lib/systemd/system/irisd.service unit)
expect_contains("irisd.service" "${unit}" "ExecStart=/usr/bin/irisd --config /etc/iris/iris.toml")
message(STATUS "packages: ok")
