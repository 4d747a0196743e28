/* SPDX-License-Identifier: MIT
 * The C ABI across nodes, run as the head of a multi-node job (t_dragon_spawn.sh): list the
 * nodes, start a process on each with dragon_client_spawn_on (each exits with its node id),
 * wait for all, check a node outside the job is DRAGON_NOT_FOUND, and list them across nodes.
 * Then channels across nodes from C: a copy of this program on node 1 ("echo") attaches two
 * channels of the head's node, which are remote there, polls, sends and receives through them,
 * and checks that the calls that need the memory itself refuse a remote channel. */
#include <dragon/dragon.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                     \
  do {                                \
    printf("capi-probe: FAIL ");      \
    printf(__VA_ARGS__);              \
    printf("\n");                     \
    return 1;                         \
  } while (0)

#define ECHO_FAIL(...)                \
  do {                                \
    printf("capi-echo: FAIL ");       \
    printf(__VA_ARGS__);              \
    printf("\n");                     \
    return 1;                         \
  } while (0)

static int echo(const char* up_text, const char* down_text) {
  dragon_client_t* c = NULL;
  if (dragon_client_connect(NULL, &c) != DRAGON_OK) ECHO_FAIL("connect: %s", dragon_last_error());
  dragon_descriptor_t up_desc, down_desc;
  if (dragon_descriptor_from_string(up_text, &up_desc) != DRAGON_OK ||
      dragon_descriptor_from_string(down_text, &down_desc) != DRAGON_OK) {
    ECHO_FAIL("bad descriptors");
  }
  dragon_channel_t* up = NULL;
  dragon_channel_t* down = NULL;
  if (dragon_client_channel_attach(c, &up_desc, NULL, &up) != DRAGON_OK ||
      dragon_client_channel_attach(c, &down_desc, NULL, &down) != DRAGON_OK) {
    ECHO_FAIL("attach: %s", dragon_last_error());
  }
  dragon_descriptor_t got;
  if (dragon_channel_descriptor(up, &got) != DRAGON_OK || memcmp(&got, &up_desc, sizeof got) != 0) {
    ECHO_FAIL("a remote channel's descriptor changed");
  }
  uint32_t ready = 0;
  if (dragon_channel_poll(up, 2, 5000000000LL, &ready) != DRAGON_OK || ready != 2) {
    ECHO_FAIL("poll writable: %s (ready %u)", dragon_last_error(), ready);
  }
  char buf[64];
  size_t len = 0;
  if (dragon_channel_recv(down, buf, sizeof buf, &len, 0) != DRAGON_WOULD_BLOCK) {
    ECHO_FAIL("a try recv of an empty remote channel was not DRAGON_WOULD_BLOCK");
  }
  const char hello[] = "hello from C";
  if (dragon_channel_send(up, hello, sizeof hello - 1, -1) != DRAGON_OK) {
    ECHO_FAIL("send: %s", dragon_last_error());
  }
  dragon_message_t* m = NULL;
  if (dragon_channel_recv_message(down, 0, &m) != DRAGON_INVALID_ARGUMENT) {
    ECHO_FAIL("recv_message of a remote channel was not refused");
  }
  dragon_wait_item_t item = {down, 1, 0};
  size_t n = 0;
  if (dragon_channel_wait_any(&item, 1, 0, &n) != DRAGON_INVALID_ARGUMENT) {
    ECHO_FAIL("wait_any of a remote channel was not refused");
  }
  /* The client's wait_any takes both kinds: an empty channel of this node and the remote one
   * the head answers on. */
  dragon_pool_t* mine_pool = NULL;
  dragon_channel_t* mine = NULL;
  if (dragon_client_pool_create(c, 1u << 20, NULL, &mine_pool) != DRAGON_OK ||
      dragon_client_channel_create(c, mine_pool, 4, 0, NULL, &mine) != DRAGON_OK) {
    ECHO_FAIL("a local channel: %s", dragon_last_error());
  }
  dragon_wait_item_t both[2] = {{mine, 1, 0}, {down, 1, 0}};
  if (dragon_client_wait_any(c, both, 2, 30000000000LL, &n) != DRAGON_OK || n != 1 ||
      both[0].ready != 0 || both[1].ready != 1) {
    ECHO_FAIL("client wait_any over a local and a remote channel: %s (n %zu, ready %u %u)",
              dragon_last_error(), n, both[0].ready, both[1].ready);
  }
  /* A local one ready first: no remote answer needed. */
  if (dragon_channel_send(mine, "x", 1, -1) != DRAGON_OK) ECHO_FAIL("send here: %s", dragon_last_error());
  dragon_wait_item_t up_and_mine[2] = {{up, 1, 0}, {mine, 1, 0}};
  if (dragon_client_wait_any(c, up_and_mine, 2, 30000000000LL, &n) != DRAGON_OK || n < 1 ||
      up_and_mine[1].ready != 1) {
    ECHO_FAIL("client wait_any did not see the local channel ready: %s", dragon_last_error());
  }
  dragon_wait_item_t bad = {NULL, 1, 0};
  if (dragon_client_wait_any(c, &bad, 1, 0, &n) != DRAGON_INVALID_ARGUMENT) {
    ECHO_FAIL("client wait_any of a NULL channel was not refused");
  }
  dragon_channel_detach(mine);
  dragon_pool_detach(mine_pool);
  if (dragon_channel_poll(down, 1, 30000000000LL, &ready) != DRAGON_OK || ready != 1) {
    ECHO_FAIL("poll readable: %s", dragon_last_error());
  }
  if (dragon_channel_recv(down, buf, sizeof buf, &len, 30000000000LL) != DRAGON_OK) {
    ECHO_FAIL("recv: %s", dragon_last_error());
  }
  if (len != 3 || memcmp(buf, "ack", 3) != 0) ECHO_FAIL("got '%.*s', not 'ack'", (int)len, buf);
  dragon_allocation_t none;
  memset(&none, 0, sizeof none);
  if (dragon_channel_send_block(up, &none, 1, 0) != DRAGON_INVALID_ARGUMENT) {
    ECHO_FAIL("send_block to a remote channel was not refused");
  }
  /* Closed from here, at its home: the head's recv there sees it. */
  if (dragon_channel_close(down) != DRAGON_OK) ECHO_FAIL("close: %s", dragon_last_error());
  if (dragon_channel_recv(down, buf, sizeof buf, &len, 0) != DRAGON_CHANNEL_CLOSED) {
    ECHO_FAIL("a closed remote channel was not DRAGON_CHANNEL_CLOSED");
  }
  if (dragon_channel_destroy(down) != DRAGON_INVALID_ARGUMENT) {
    ECHO_FAIL("destroy of a remote channel was not refused");
  }
  dragon_channel_detach(up);
  dragon_channel_detach(down);
  dragon_client_close(c);
  return 0;
}

static int channels(dragon_client_t* c, const char* self, uint32_t node) {
  dragon_pool_t* pool = NULL;
  if (dragon_client_pool_create(c, 4u << 20, NULL, &pool) != DRAGON_OK) FAIL("pool: %s", dragon_last_error());
  dragon_channel_t* up = NULL;
  dragon_channel_t* down = NULL;
  if (dragon_client_channel_create(c, pool, 4, 0, NULL, &up) != DRAGON_OK ||
      dragon_client_channel_create(c, pool, 4, 0, NULL, &down) != DRAGON_OK) {
    FAIL("channels: %s", dragon_last_error());
  }
  dragon_descriptor_t d;
  char up_text[80], down_text[80];
  dragon_channel_descriptor(up, &d);
  dragon_descriptor_to_string(&d, up_text, sizeof up_text);
  dragon_channel_descriptor(down, &d);
  dragon_descriptor_to_string(&d, down_text, sizeof down_text);
  const char* argv[] = {self, "echo", up_text, down_text, NULL};
  dragon_spawn_options_t o;
  dragon_spawn_options_init(&o);
  o.argv = argv;
  dragon_process_t p;
  size_t count = 0;
  if (dragon_client_spawn_on(c, &o, node, &p, 1, &count) != DRAGON_OK || count != 1) {
    FAIL("spawn echo: %s", dragon_last_error());
  }
  char buf[64];
  size_t len = 0;
  if (dragon_channel_recv(up, buf, sizeof buf, &len, 30000000000LL) != DRAGON_OK) {
    FAIL("recv from the echo: %s", dragon_last_error());
  }
  if (len != 12 || memcmp(buf, "hello from C", 12) != 0) FAIL("got '%.*s'", (int)len, buf);
  if (dragon_channel_send(down, "ack", 3, -1) != DRAGON_OK) FAIL("send: %s", dragon_last_error());
  dragon_exit_t e;
  if (dragon_client_wait(c, &p.puid, 1, 30000000000LL, &e) != DRAGON_OK || e.exit_code != 0) {
    FAIL("the echo on node %u failed", node);
  }
  if (dragon_channel_recv(down, buf, sizeof buf, &len, 0) != DRAGON_CHANNEL_CLOSED) {
    FAIL("the echo's close did not reach the channel's home");
  }
  dragon_channel_detach(up);
  dragon_channel_detach(down);
  dragon_pool_detach(pool);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 4 && strcmp(argv[1], "echo") == 0) return echo(argv[2], argv[3]);
  dragon_client_t* c = NULL;
  if (dragon_client_connect(NULL, &c) != DRAGON_OK) FAIL("connect: %s", dragon_last_error());
  dragon_node_t nodes[16];
  size_t n = 0;
  if (dragon_client_nodes(c, nodes, 16, &n) != DRAGON_OK) FAIL("nodes: %s", dragon_last_error());
  if (n < 2 || n > 16) FAIL("%zu nodes", n);
  uint64_t puids[16];
  for (size_t i = 0; i < n; ++i) {
    char script[64];
    snprintf(script, sizeof script, "exit %u", nodes[i].node);
    const char* argv[] = {"/bin/sh", "-c", script, NULL};
    dragon_spawn_options_t o;
    dragon_spawn_options_init(&o);
    o.argv = argv;
    dragon_process_t p;
    size_t count = 0;
    if (dragon_client_spawn_on(c, &o, nodes[i].node, &p, 1, &count) != DRAGON_OK || count != 1) {
      FAIL("spawn on node %u: %s", nodes[i].node, dragon_last_error());
    }
    if ((uint32_t)(p.puid >> 40) != nodes[i].node) FAIL("puid %llu is not of node %u",
                                                        (unsigned long long)p.puid, nodes[i].node);
    puids[i] = p.puid;
  }
  dragon_exit_t exits[16];
  if (dragon_client_wait(c, puids, n, 30000000000LL, exits) != DRAGON_OK) {
    FAIL("wait: %s", dragon_last_error());
  }
  for (size_t i = 0; i < n; ++i) {
    if (exits[i].exit_code != (int32_t)nodes[i].node) FAIL("node %u: exit %d", nodes[i].node,
                                                           exits[i].exit_code);
  }
  const char* true_argv[] = {"/bin/true", NULL};
  dragon_spawn_options_t o;
  dragon_spawn_options_init(&o);
  o.argv = true_argv;
  dragon_process_t p;
  size_t count = 0;
  if (dragon_client_spawn_on(c, &o, 4000, &p, 1, &count) != DRAGON_NOT_FOUND) {
    FAIL("a node outside the job was not DRAGON_NOT_FOUND");
  }
  dragon_process_entry_t entries[64];
  size_t listed = 0;
  if (dragon_client_list_processes(c, entries, 64, &listed) != DRAGON_OK) {
    FAIL("list: %s", dragon_last_error());
  }
  size_t found = 0;
  for (size_t i = 0; i < listed && i < 64; ++i) {
    for (size_t k = 0; k < n; ++k) found += entries[i].puid == puids[k];
  }
  if (found != n) FAIL("the listing shows %zu of the %zu processes", found, n);
  if (argv[0][0] != '/') FAIL("run me by my absolute path (to start my copy on another node)");
  if (channels(c, argv[0], nodes[1].node) != 0) return 1;
  dragon_client_close(c);
  printf("capi-probe: ok %zu nodes, channels with node %u\n", n, nodes[1].node);
  return 0;
}
