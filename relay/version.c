/* version.c — build identity, stamped by CMake. */
#include "relay/relay.h"

const char *rly_version(void) { return RELAY_VERSION; }
const char *rly_git_commit(void) { return RELAY_GIT_COMMIT; }
const char *rly_build_date(void) { return RELAY_BUILD_DATE; }
