/*
 * fuzz_config_relay.c — the configuration loader against the real option
 * tables of `relay serve`, `relay gen-csr`, the admin commands and the peer
 * commands (see config_harness.h).  The tables are static in
 * cmd/relay/main.c, admin_cmds.c and peer.c, so this file includes them,
 * main() renamed out of libFuzzer's way.
 */
#include "config_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int relay_cmd_main(int argc, char **argv);

#define main relay_cmd_main
#include "cmd/relay/main.c"
#undef main
#include "cmd/relay/admin_cmds.c"
#include "cmd/relay/peer.c"

static const fz_cfg_spec g_specs[] = {
    {&g_serve_spec, sizeof(rly_config)},
    {&g_csr_spec, sizeof(csr_cfg)},
    {&g_create_spec, sizeof(admin_cfg)},
    {&g_list_spec, sizeof(admin_cfg)},
    {&g_get_spec, sizeof(admin_cfg)},
    {&g_auth_spec, sizeof(auth_cfg)},
    {&g_peer_specs[RC_PEER_RAW], sizeof(peer_cfg)},
    {&g_peer_specs[RC_PEER_TCP_LISTEN], sizeof(peer_cfg)},
    {&g_peer_specs[RC_PEER_TCP_DIAL], sizeof(peer_cfg)},
    {&g_peer_specs[RC_PEER_UDP_LISTEN], sizeof(peer_cfg)},
    {&g_peer_specs[RC_PEER_UDP_DIAL], sizeof(peer_cfg)},
    {&g_peer_specs[RC_PEER_PUBSUB], sizeof(peer_cfg)},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fz_config_one(g_specs, CM_ARRAY_LEN(g_specs), data, size);
}
