/*
 * peer.h — the peer subcommands of the `relay` binary (peer.c), for the
 * dispatch table in main.c.
 */
#ifndef RELAY_CMD_PEER_H
#define RELAY_CMD_PEER_H

int relay_cmd_raw(int argc, char **argv);
int relay_cmd_tcp_listen(int argc, char **argv);
int relay_cmd_tcp_dial(int argc, char **argv);
int relay_cmd_udp_listen(int argc, char **argv);
int relay_cmd_udp_dial(int argc, char **argv);
int relay_cmd_pubsub_dial(int argc, char **argv);

#endif
