# Install rules and Debian packages (docs/operations.md, "Install from the packages").
#
# Three install components, one .deb each (`make package`, CPack's DEB generator):
#   server -> irisd               irisd and irisctl, the systemd unit, /etc/iris/iris.toml
#                                 (a conffile), the docs; maintainer scripts create the system
#                                 user `iris` and /var/lib/iris
#   cli    -> iris-client         the `iris` command-line client
#   dev    -> libiris-client-dev  include/iris/, the static client library and the in-tree
#                                 libraries it needs, the CMake package config:
#                                 find_package(iris CONFIG) gives the target iris::client
# `cmake --install build --prefix P --component dev` installs only the library (what a
# consumer project needs; tests/integration/package/ builds one that way).
include(GNUInstallDirs)

# The configuration file's directory. Absolute (the unit and the docs name
# /etc/iris/iris.toml whatever the install prefix); a package installs it there.
set(IRIS_INSTALL_CONFDIR "/etc/iris" CACHE PATH "Directory for iris.toml (absolute)")

# --- server ---------------------------------------------------------------------------
install(TARGETS irisd irisctl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT server)
# The unit's ExecStart names /usr/bin/irisd: right for the package (prefix /usr); an install
# under another prefix needs a drop-in overriding ExecStart (docs/operations.md).
install(FILES ${PROJECT_SOURCE_DIR}/deploy/systemd/irisd.service
        DESTINATION lib/systemd/system COMPONENT server)
install(FILES ${PROJECT_SOURCE_DIR}/deploy/iris.toml
        DESTINATION ${IRIS_INSTALL_CONFDIR} COMPONENT server)
install(FILES ${PROJECT_SOURCE_DIR}/README.md ${PROJECT_SOURCE_DIR}/LICENSE
              ${PROJECT_SOURCE_DIR}/docs/operations.md ${PROJECT_SOURCE_DIR}/docs/architecture.md
              ${PROJECT_SOURCE_DIR}/docs/protocol.md ${PROJECT_SOURCE_DIR}/docs/security.md
              ${PROJECT_SOURCE_DIR}/docs/storage.md ${PROJECT_SOURCE_DIR}/docs/reliability.md
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/iris COMPONENT server)
install(FILES ${PROJECT_SOURCE_DIR}/deploy/grafana/iris.json
              ${PROJECT_SOURCE_DIR}/deploy/prometheus/iris-alerts.yml
              ${PROJECT_SOURCE_DIR}/deploy/prometheus/prometheus.yml
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/iris/examples COMPONENT server)

# --- cli ------------------------------------------------------------------------------
install(TARGETS iris RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT cli)
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/iris-client COMPONENT cli)

# --- dev ------------------------------------------------------------------------------
set(IRIS_CLIENT_LIBS iris_client iris_net iris_wire iris_common iris_proto)
foreach(lib ${IRIS_CLIENT_LIBS})
  string(REGEX REPLACE "^iris_" "" export_name ${lib})
  set_target_properties(${lib} PROPERTIES EXPORT_NAME ${export_name})
endforeach()
set(IRIS_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/iris)
install(TARGETS ${IRIS_CLIENT_LIBS} EXPORT iris-targets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}/iris COMPONENT dev
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/iris
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT dev)
install(EXPORT iris-targets NAMESPACE iris:: DESTINATION ${IRIS_CMAKE_DIR} COMPONENT dev)
include(CMakePackageConfigHelpers)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/iris-config.cmake.in
  ${PROJECT_BINARY_DIR}/iris-config.cmake INSTALL_DESTINATION ${IRIS_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/iris-config-version.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/iris-config.cmake ${PROJECT_BINARY_DIR}/iris-config-version.cmake
        DESTINATION ${IRIS_CMAKE_DIR} COMPONENT dev)
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/libiris-client-dev COMPONENT dev)

# --- packages -------------------------------------------------------------------------
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME iris)
set(CPACK_PACKAGE_VENDOR "Iris")
set(CPACK_PACKAGE_CONTACT "Iris maintainers <maintainers@iris.invalid>")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_COMPONENTS_ALL server cli dev)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://github.com/iris-im/iris")
# Runtime dependencies of the binaries from dpkg-shlibdeps (libssl3, librocksdb7.8,
# libprotobuf32, ...), added to each package's explicit Depends below.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)

set(CPACK_DEBIAN_SERVER_PACKAGE_NAME irisd)
set(CPACK_DEBIAN_SERVER_PACKAGE_SECTION net)
set(CPACK_DEBIAN_SERVER_PACKAGE_DEPENDS "adduser")
set(CPACK_COMPONENT_SERVER_DESCRIPTION
    "Iris messaging server\nirisd (TLS 1.3 messaging server on RocksDB) and irisctl (its admin\ncommand), the systemd unit irisd.service and /etc/iris/iris.toml.")
set(CPACK_DEBIAN_SERVER_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/deploy/debian/postinst ${PROJECT_SOURCE_DIR}/deploy/debian/prerm
    ${PROJECT_SOURCE_DIR}/deploy/debian/postrm ${PROJECT_SOURCE_DIR}/deploy/debian/conffiles)
set(CPACK_DEBIAN_SERVER_PACKAGE_CONTROL_STRICT_PERMISSION ON)

set(CPACK_DEBIAN_CLI_PACKAGE_NAME iris-client)
set(CPACK_DEBIAN_CLI_PACKAGE_SECTION net)
set(CPACK_COMPONENT_CLI_DESCRIPTION
    "Iris command-line client\niris: the end-to-end encrypted command-line client of Iris.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME libiris-client-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
# Static libraries: nothing for dpkg-shlibdeps; these are what iris::client links
# (iris-config.cmake finds them).
set(CPACK_DEBIAN_DEV_PACKAGE_SHLIBDEPS OFF)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
    "libssl-dev (>= 3), libprotobuf-dev, libsqlite3-dev, libsignal-protocol-c-dev, libxxhash-dev, pkg-config")
set(CPACK_COMPONENT_DEV_DESCRIPTION
    "Iris client library (development files)\nThe C++ client library of Iris: headers (include/iris/), the static library\nand the CMake package config (find_package(iris CONFIG), target iris::client).")
include(CPack)
