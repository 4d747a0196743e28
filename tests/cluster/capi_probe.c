/* SPDX-License-Identifier: MIT
 * The C ABI across nodes, run as the head of a multi-node job (t_dragon_spawn.sh): list the
 * nodes, start a process on each with dragon_client_spawn_on (each exits with its node id),
 * wait for all, check a node outside the job is DRAGON_NOT_FOUND, and list them across nodes. */
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

int main(void) {
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
  const char* argv[] = {"/bin/true", NULL};
  dragon_spawn_options_t o;
  dragon_spawn_options_init(&o);
  o.argv = argv;
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
  dragon_client_close(c);
  printf("capi-probe: ok %zu nodes\n", n);
  return 0;
}
