/*
 * fuzz_grpc.c — gRPC message framing and protobuf decoding of every
 * message type of controller.proto.  The first byte picks the chunking of
 * the stream fed to the decoder; each complete message is unpacked as every
 * message type and, when it parses, packed again and re-parsed.  (Sizes may
 * differ: unknown fields and non-minimal varints are re-encoded.)
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tunnel/tunnel.h"

static const ProtobufCMessageDescriptor *const g_types[] = {
    &relay__v1__slot_request__descriptor,
    &relay__v1__slot_decision__descriptor,
    &relay__v1__principal__descriptor,
    &relay__v1__admin_request__descriptor,
    &relay__v1__session_status__descriptor,
    &relay__v1__created_session__descriptor,
    &relay__v1__admin_response__descriptor,
    &relay__v1__relay_event__descriptor,
    &relay__v1__hello__descriptor,
    &relay__v1__session_event__descriptor,
    &relay__v1__controller_command__descriptor,
    &relay__v1__kick__descriptor,
    &relay__v1__drain__descriptor,
    &relay__v1__limits__descriptor,
};

static void roundtrip(const uint8_t *msg, size_t len) {
  for (size_t i = 0; i < sizeof g_types / sizeof g_types[0]; i++) {
    ProtobufCMessage *m = protobuf_c_message_unpack(g_types[i], NULL, len, msg);
    if (!m) continue;
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (protobuf_c_message_pack(m, buf) != n) abort();
    ProtobufCMessage *m2 = protobuf_c_message_unpack(g_types[i], NULL, n, buf);
    if (m2) protobuf_c_message_free_unpacked(m2, NULL);
    protobuf_c_message_free_unpacked(m, NULL);
    free(buf);
  }
}

static int on_message(void *ud, const uint8_t *msg, size_t len) {
  size_t *count = ud;
  (*count)++;
  roundtrip(msg, len);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t chunk = (size_t)(data[0] % 17) + 1;
  data++;
  size--;
  tun_grpc_decoder d;
  tun_grpc_decoder_init(&d, 1 << 16);
  size_t count = 0;
  for (size_t off = 0; off < size; off += chunk) {
    size_t n = size - off < chunk ? size - off : chunk;
    if (tun_grpc_decode(&d, data + off, n, on_message, &count) != 0) break;
  }
  tun_grpc_decoder_free(&d);
  /* Also the raw bytes as one message of each type. */
  roundtrip(data, size);
  /* And grpc-timeout / grpc-message parsing on the same bytes as text. */
  char text[64], out[200];
  size_t t = size < sizeof text - 1 ? size : sizeof text - 1;
  memcpy(text, data, t);
  text[t] = '\0';
  uint64_t ms;
  tun_grpc_timeout_parse(text, &ms);
  tun_grpc_message_decode(text, out, sizeof out);
  return 0;
}
