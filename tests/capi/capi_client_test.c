/* SPDX-License-Identifier: MIT
 * The client half of the C ABI, in C, against a real dragond: objects by name, a channel
 * between two clients, processes with captured output, groups, errors, and a vanished daemon. */
#define _GNU_SOURCE
#include <dragon/dragon.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, __LINE__, \
              #cond, dragon_last_error());                                           \
      failures++;                                                                    \
    }                                                                                \
  } while (0)

struct output {
  int lines;
  char last[256];
};

static void onLine(void* context, uint64_t puid, int is_stderr, const char* line, size_t length) {
  struct output* out = context;
  (void)puid;
  (void)is_stderr;
  out->lines++;
  if (length >= sizeof out->last) length = sizeof out->last - 1;
  memcpy(out->last, line, length);
  out->last[length] = '\0';
}

static pid_t startDaemon(const char* socket_path) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    char fd[16];
    snprintf(fd, sizeof fd, "%d", ready[1]);
    fcntl(ready[1], F_SETFD, 0);
    execl(DRAGOND_PATH, DRAGOND_PATH, "--standalone", "--allow-root", "--socket", socket_path,
          "--ready-fd", fd, "--set", "pool.default_size=4MiB", (char*)NULL);
    _exit(127);
  }
  close(ready[1]);
  struct pollfd p = {ready[0], POLLIN, 0};
  char buf[8];
  int ok = poll(&p, 1, 30000) == 1 && read(ready[0], buf, 5) == 5;
  close(ready[0]);
  return ok ? pid : -1;
}

int main(void) {
  char dir[] = "/tmp/dragon-test-XXXXXX";
  if (mkdtemp(dir) == NULL) return 1;
  char socket_path[128];
  snprintf(socket_path, sizeof socket_path, "%s/d.sock", dir);
  pid_t daemon = startDaemon(socket_path);
  if (daemon < 0) {
    fprintf(stderr, "dragond did not start\n");
    return 1;
  }

  dragon_client_t* a = NULL;
  dragon_client_t* b = NULL;
  CHECK(dragon_client_connect(socket_path, &a) == DRAGON_OK);
  CHECK(dragon_client_connect(socket_path, &b) == DRAGON_OK);

  /* Objects: a named channel, found by the other client. */
  dragon_pool_t* pool = NULL;
  CHECK(dragon_client_pool_create(a, 1 << 20, "c-pool", &pool) == DRAGON_OK);
  dragon_channel_t* tx = NULL;
  CHECK(dragon_client_channel_create(a, pool, 8, 64, "c-channel", &tx) == DRAGON_OK);
  dragon_channel_t* rx = NULL;
  CHECK(dragon_client_channel_attach(b, NULL, "c-channel", &rx) == DRAGON_OK);
  CHECK(dragon_channel_send(tx, "ping", 4, DRAGON_TIMEOUT_FOREVER) == DRAGON_OK);
  char buf[16];
  size_t len = 0;
  CHECK(dragon_channel_recv(rx, buf, sizeof buf, &len, 1000000000) == DRAGON_OK);
  CHECK(len == 4 && memcmp(buf, "ping", 4) == 0);
  dragon_descriptor_t found;
  CHECK(dragon_client_lookup_name(b, "c-pool", &found) == DRAGON_OK);
  dragon_descriptor_t mine;
  CHECK(dragon_pool_descriptor(pool, &mine) == DRAGON_OK);
  CHECK(memcmp(&found, &mine, sizeof mine) == 0);
  CHECK(dragon_client_lookup_name(b, "absent", &found) == DRAGON_NOT_FOUND);
  dragon_pool_t* dup = NULL;
  CHECK(dragon_client_pool_create(b, 1 << 20, "c-pool", &dup) == DRAGON_ALREADY_EXISTS);
  CHECK(dup == NULL);

  /* Processes with captured output. */
  struct output out = {0, ""};
  CHECK(dragon_client_set_output_handler(a, onLine, &out) == DRAGON_OK);
  const char* argv[] = {"/bin/sh", "-c", "echo from-c; exit 4", NULL};
  dragon_spawn_options_t o;
  dragon_spawn_options_init(&o);
  o.argv = argv;
  o.label = "[{puid}] ";
  dragon_process_t proc;
  size_t n = 0;
  CHECK(dragon_client_spawn(a, &o, &proc, 1, &n) == DRAGON_OK);
  CHECK(n == 1 && proc.pid > 0);
  dragon_exit_t ex;
  CHECK(dragon_client_wait(a, &proc.puid, 1, DRAGON_TIMEOUT_FOREVER, &ex) == DRAGON_OK);
  CHECK(ex.exit_code == 4 && ex.signal == 0);
  CHECK(out.lines == 1 && strstr(out.last, "] from-c\n") != NULL);

  /* An empty environment ({NULL}) is empty; only env NULL means this process's. */
  CHECK(setenv("DRAGON_CAPI_MARK", "1", 1) == 0);
  const char* noEnv[] = {NULL};
  const char* noMark[] = {"/bin/sh", "-c", "test -z \"$DRAGON_CAPI_MARK\"", NULL};
  o.argv = noMark;
  o.label = NULL;
  o.env = noEnv;
  CHECK(dragon_client_spawn(a, &o, &proc, 1, &n) == DRAGON_OK);
  CHECK(dragon_client_wait(a, &proc.puid, 1, DRAGON_TIMEOUT_FOREVER, &ex) == DRAGON_OK);
  CHECK(ex.exit_code == 0 && ex.signal == 0);
  o.env = NULL;
  CHECK(dragon_client_spawn(a, &o, &proc, 1, &n) == DRAGON_OK);
  CHECK(dragon_client_wait(a, &proc.puid, 1, DRAGON_TIMEOUT_FOREVER, &ex) == DRAGON_OK);
  CHECK(ex.exit_code == 1 && ex.signal == 0);

  /* A group of three, signalled together. */
  const char* sleeper[] = {"/bin/sleep", "600", NULL};
  o.argv = sleeper;
  o.count = 3;
  dragon_process_t group[3];
  CHECK(dragon_client_spawn(a, &o, group, 3, &n) == DRAGON_OK && n == 3);
  CHECK(group[0].group != 0 && group[0].group == group[2].group);
  dragon_process_entry_t entries[16];
  CHECK(dragon_client_list_processes(a, entries, 16, &n) == DRAGON_OK && n == 6);
  CHECK(dragon_client_signal_group(a, group[0].group, SIGTERM) == DRAGON_OK);
  uint64_t puids[3] = {group[0].puid, group[1].puid, group[2].puid};
  dragon_exit_t exits[3];
  CHECK(dragon_client_wait(a, puids, 3, 30000000000, exits) == DRAGON_OK);
  CHECK(exits[0].signal == SIGTERM && exits[2].signal == SIGTERM);
  /* One process signalled by puid. */
  o.count = 1;
  CHECK(dragon_client_spawn(a, &o, group, 1, &n) == DRAGON_OK && n == 1);
  CHECK(dragon_client_signal(a, &group[0].puid, 1, SIGKILL) == DRAGON_OK);
  CHECK(dragon_client_wait(a, &group[0].puid, 1, 30000000000, exits) == DRAGON_OK);
  CHECK(exits[0].signal == SIGKILL);
  CHECK(dragon_client_signal(a, &group[0].puid, 1, 99999) == DRAGON_INVALID_ARGUMENT);
  /* Pumping with nothing to deliver returns after its timeout. */
  CHECK(dragon_client_pump(a, 1000000) == DRAGON_OK);
  CHECK(dragon_client_end_job(a, 0) == DRAGON_OK);

  /* Remote memory's calls, between two pools of this node (across nodes: the cluster tests). */
  dragon_pool_t* other = NULL;
  CHECK(dragon_client_pool_create(b, 1 << 20, NULL, &other) == DRAGON_OK);
  dragon_allocation_t x, y;
  CHECK(dragon_pool_alloc(pool, 1000, 0, &x) == DRAGON_OK);
  CHECK(dragon_pool_alloc(other, 1000, 0, &y) == DRAGON_OK);
  void* px = NULL;
  void* py = NULL;
  CHECK(dragon_pool_pointer(pool, &x, &px) == DRAGON_OK);
  CHECK(dragon_pool_pointer(other, &y, &py) == DRAGON_OK);
  for (int i = 0; i < 1000; ++i) ((unsigned char*)px)[i] = (unsigned char)(i * 13);
  memset(py, 0, 1000);
  dragon_memory_range_t from = {{{0}}, x.offset, 0};
  dragon_memory_range_t to = {{{0}}, y.offset, 10};
  CHECK(dragon_pool_descriptor(pool, &from.pool) == DRAGON_OK);
  CHECK(dragon_pool_descriptor(other, &to.pool) == DRAGON_OK);
  dragon_transfer_t* t = NULL;
  CHECK(dragon_client_put(a, &from, &to, 990, &t) == DRAGON_OK);
  CHECK(dragon_transfer_wait(t, 10000000000LL) == DRAGON_OK);
  CHECK(memcmp((unsigned char*)py + 10, px, 990) == 0);
  dragon_transfer_free(t);
  to.offset = 0;
  CHECK(dragon_client_get(b, &to, &from, 1000, &t) == DRAGON_OK);  /* b reads other into pool */
  CHECK(dragon_transfer_wait(t, DRAGON_TIMEOUT_FOREVER) == DRAGON_OK);
  CHECK(memcmp(px, py, 1000) == 0);
  dragon_transfer_free(t);
  to.offset = 11; /* 990 bytes from 11 pass the allocation's end: refused where it lives */
  CHECK(dragon_client_put(a, &from, &to, 990, &t) == DRAGON_OK);
  CHECK(dragon_transfer_wait(t, 10000000000LL) == DRAGON_INVALID_ARGUMENT);
  dragon_transfer_free(t);
  CHECK(dragon_client_put(a, NULL, &to, 1, &t) == DRAGON_INVALID_ARGUMENT);
  CHECK(dragon_transfer_wait(NULL, 0) == DRAGON_INVALID_ARGUMENT);
  dragon_transfer_free(NULL);
  /* Nothing to wait on: the timeout, or an error without one (it would never return). */
  size_t nready = 7;
  CHECK(dragon_client_wait_any(a, NULL, 0, 1000000, &nready) == DRAGON_OK && nready == 0);
  CHECK(dragon_client_wait_any(a, NULL, 0, DRAGON_TIMEOUT_FOREVER, &nready) ==
        DRAGON_INVALID_ARGUMENT);

  /* A name given later is found by another client; destroyed, the object and its name go. */
  dragon_descriptor_t otherDesc;
  CHECK(dragon_pool_descriptor(other, &otherDesc) == DRAGON_OK);
  CHECK(dragon_client_register_name(b, "c-later", &otherDesc) == DRAGON_OK);
  CHECK(dragon_client_lookup_name(a, "c-later", &found) == DRAGON_OK);
  CHECK(memcmp(&found, &otherDesc, sizeof found) == 0);
  CHECK(dragon_client_register_name(b, "c-later", &mine) == DRAGON_ALREADY_EXISTS);
  dragon_pool_detach(other);
  CHECK(dragon_client_destroy(b, &otherDesc) == DRAGON_OK);
  CHECK(dragon_client_lookup_name(a, "c-later", &found) == DRAGON_NOT_FOUND);
  CHECK(dragon_client_destroy(b, &otherDesc) == DRAGON_NOT_FOUND);
  /* A second reference, attached and detached again. */
  dragon_pool_t* again = NULL;
  CHECK(dragon_client_pool_attach(a, NULL, "c-pool", &again) == DRAGON_OK);
  CHECK(dragon_client_detach(a, &mine) == DRAGON_OK);
  dragon_pool_detach(again);
  CHECK(dragon_client_detach(NULL, &mine) == DRAGON_INVALID_ARGUMENT);

  /* Bad input. */
  CHECK(dragon_client_spawn(NULL, &o, group, 3, &n) == DRAGON_INVALID_ARGUMENT);
  o.stdout_mode = 99;
  CHECK(dragon_client_spawn(a, &o, group, 3, &n) == DRAGON_INVALID_ARGUMENT);
  /* An fd to pass that is not open fails that spawn alone: the client goes on. */
  o.stdout_mode = DRAGON_STDIO_PASSED;
  o.stdout_fd = 987;
  o.count = 1;
  o.argv = argv;
  CHECK(dragon_client_spawn(a, &o, group, 1, &n) == DRAGON_INVALID_ARGUMENT);
  CHECK(dragon_client_list_processes(a, entries, 16, &n) == DRAGON_OK);
  CHECK(dragon_client_pool_attach(a, NULL, NULL, &dup) == DRAGON_INVALID_ARGUMENT);
  CHECK(dragon_client_connect("/nonexistent/dragond.sock", &b) == DRAGON_NOT_FOUND);

  /* dragond goes away: calls return PEER_LOST. */
  kill(daemon, SIGKILL);
  int st;
  waitpid(daemon, &st, 0);
  CHECK(dragon_client_list_processes(a, entries, 16, &n) == DRAGON_PEER_LOST);

  dragon_channel_detach(tx);
  dragon_channel_detach(rx);
  dragon_pool_detach(pool);
  dragon_client_close(a);
  dragon_client_close(b);
  unlink(socket_path);
  rmdir(dir);
  if (failures == 0) printf("capi client: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
