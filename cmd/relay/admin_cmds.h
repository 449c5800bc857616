/*
 * admin_cmds.h — the admin and sign-in subcommands of `relay` (create,
 * list, get, delete, auth), registered in main.c.
 */
#ifndef RELAY_CMD_ADMIN_CMDS_H
#define RELAY_CMD_ADMIN_CMDS_H

int cmd_create(int argc, char **argv);
int cmd_list(int argc, char **argv);
int cmd_get(int argc, char **argv);
int cmd_delete(int argc, char **argv);
int cmd_auth(int argc, char **argv);

#endif
