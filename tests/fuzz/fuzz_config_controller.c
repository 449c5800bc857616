/*
 * fuzz_config_controller.c — the configuration loader against the real
 * option tables of `relay-controller run`, `init-ca` and `sign-csr` (see
 * config_harness.h).  The tables are static in cmd/controller/main.c, so
 * this file includes it, with its main() renamed out of libFuzzer's way.
 */
#include "config_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int controller_cmd_main(int argc, char **argv);

#define main controller_cmd_main
#include "cmd/controller/main.c"
#undef main

static const fz_cfg_spec g_specs[] = {
    {&g_run_spec, sizeof(run_cfg)},
    {&g_init_spec, sizeof(ca_cfg)},
    {&g_sign_spec, sizeof(ca_cfg)},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fz_config_one(g_specs, CM_ARRAY_LEN(g_specs), data, size);
}
