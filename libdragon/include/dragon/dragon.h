/* SPDX-License-Identifier: MIT
 * Dragon's C ABI: opaque handles, status codes, outputs written only on success.
 * Every function is safe to call from C; none throws or aborts on bad input. */
#ifndef DRAGON_DRAGON_H
#define DRAGON_DRAGON_H

#include <stddef.h>
#include <stdint.h>

/* C naming, not the C++ API's. NOLINTBEGIN(readability-identifier-naming) */
#ifdef __cplusplus
extern "C" {
#endif

typedef enum dragon_status {
  DRAGON_OK = 0,
  DRAGON_WOULD_BLOCK = 1,
  DRAGON_TIMEOUT = 2,
  DRAGON_INVALID_ARGUMENT = 10,
  DRAGON_NOT_FOUND = 11,
  DRAGON_PERMISSION_DENIED = 12,
  DRAGON_ALREADY_EXISTS = 13,
  DRAGON_MESSAGE_TOO_LARGE = 14,
  DRAGON_CHANNEL_CLOSED = 15,
  DRAGON_POOL_EXHAUSTED = 20,
  DRAGON_CHANNEL_FULL = 21,
  DRAGON_PEER_LOST = 30,
  DRAGON_NODE_LOST = 31,
  DRAGON_SYSTEM_ERROR = 40,
  DRAGON_CORRUPT = 41,
  DRAGON_INTERNAL = 42
} dragon_status_t;

/* Timeouts are in nanoseconds. */
#define DRAGON_TIMEOUT_NONE ((int64_t)0)
#define DRAGON_TIMEOUT_FOREVER ((int64_t)-1)

typedef struct dragon_pool dragon_pool_t;
typedef struct dragon_channel dragon_channel_t;
typedef struct dragon_message dragon_message_t;

typedef struct dragon_allocation {
  uint64_t pool_id;
  uint64_t offset;
  uint64_t size;
} dragon_allocation_t;

/* A serialised object descriptor (32 bytes). */
typedef struct dragon_descriptor {
  uint8_t bytes[32];
} dragon_descriptor_t;

typedef struct dragon_pool_stats_s {
  uint64_t total_bytes;
  uint64_t used_bytes;
  uint64_t free_bytes;
  uint64_t largest_free_block;
  uint64_t allocation_count;
  uint64_t free_block_count;
} dragon_pool_stats_t;

enum { DRAGON_READABLE = 1, DRAGON_WRITABLE = 2 };

typedef struct dragon_wait_item {
  dragon_channel_t* channel;
  uint32_t events; /* DRAGON_READABLE | DRAGON_WRITABLE */
  uint32_t ready;  /* set by dragon_channel_wait_any */
} dragon_wait_item_t;

/* A short name of a status ("PoolExhausted"), never NULL. */
const char* dragon_status_name(dragon_status_t status);
/* The message of this thread's last failed call, never NULL. */
const char* dragon_last_error(void);

dragon_status_t dragon_pool_create(uint64_t size, dragon_pool_t** out_pool);
/* Takes ownership of `fd` on success only. */
dragon_status_t dragon_pool_attach(int fd, const dragon_descriptor_t* desc, dragon_pool_t** out_pool);
/* Unmaps the pool from this process; the memory lives on while others map it. */
void dragon_pool_detach(dragon_pool_t* pool);
/* The pool's memfd (still the pool's). DRAGON_NOT_FOUND for a pool from dragon_client_pool_create
 * or dragon_client_pool_attach: a client keeps no fd for the pools it maps. */
dragon_status_t dragon_pool_fd(const dragon_pool_t* pool, int* out_fd);
dragon_status_t dragon_pool_descriptor(const dragon_pool_t* pool, dragon_descriptor_t* out_desc);
dragon_status_t dragon_pool_alloc(dragon_pool_t* pool, uint64_t size, int64_t timeout_ns,
                                  dragon_allocation_t* out_alloc);
dragon_status_t dragon_pool_free(dragon_pool_t* pool, const dragon_allocation_t* alloc);
dragon_status_t dragon_pool_pointer(dragon_pool_t* pool, const dragon_allocation_t* alloc,
                                    void** out_ptr);
dragon_status_t dragon_pool_stats(dragon_pool_t* pool, dragon_pool_stats_t* out_stats);
/* Frees allocations whose owners are gone; `out_freed` may be NULL. */
dragon_status_t dragon_pool_reclaim(dragon_pool_t* pool, uint64_t* out_freed);

dragon_status_t dragon_channel_create(dragon_pool_t* pool, uint32_t capacity, uint32_t inline_size,
                                      dragon_channel_t** out_channel);
dragon_status_t dragon_channel_attach(dragon_pool_t* pool, const dragon_descriptor_t* desc,
                                      dragon_channel_t** out_channel);
/* Releases the handle; the channel lives on. */
void dragon_channel_detach(dragon_channel_t* channel);
/* Frees the channel and its queued messages, then releases the handle (on success only: on a
 * failure the handle is still the caller's, to detach). */
dragon_status_t dragon_channel_destroy(dragon_channel_t* channel);
dragon_status_t dragon_channel_descriptor(const dragon_channel_t* channel,
                                          dragon_descriptor_t* out_desc);
dragon_status_t dragon_channel_send(dragon_channel_t* channel, const void* data, size_t length,
                                    int64_t timeout_ns);
/* Zero copy: on success the channel owns the allocation. */
dragon_status_t dragon_channel_send_block(dragon_channel_t* channel,
                                          const dragon_allocation_t* alloc, size_t length,
                                          int64_t timeout_ns);
dragon_status_t dragon_channel_recv(dragon_channel_t* channel, void* buffer, size_t capacity,
                                    size_t* out_length, int64_t timeout_ns);
/* Receives in place: read it with dragon_message_data, then dragon_message_release it. */
dragon_status_t dragon_channel_recv_message(dragon_channel_t* channel, int64_t timeout_ns,
                                            dragon_message_t** out_message);
dragon_status_t dragon_message_data(const dragon_message_t* message, const void** out_data,
                                    size_t* out_length);
void dragon_message_release(dragon_message_t* message);
dragon_status_t dragon_channel_close(dragon_channel_t* channel);
/* Waits until `events` (1 readable, 2 writable) hold on one channel, local or of another node
   (attached with dragon_client_channel_attach), and sets *out_ready to those that do (0 when
   the timeout passed first). */
dragon_status_t dragon_channel_poll(dragon_channel_t* channel, uint32_t events, int64_t timeout_ns,
                                    uint32_t* out_ready);
/* Local channels only (a remote one is refused: use dragon_client_wait_any). With no items it
 * waits out the timeout; with none and no timeout it is DRAGON_INVALID_ARGUMENT. */
dragon_status_t dragon_channel_wait_any(dragon_wait_item_t* items, size_t count,
                                        int64_t timeout_ns, size_t* out_ready);

dragon_status_t dragon_descriptor_to_string(const dragon_descriptor_t* desc, char* buffer,
                                            size_t capacity);
dragon_status_t dragon_descriptor_from_string(const char* text, dragon_descriptor_t* out_desc);

/* ---- The client of dragond: every control operation ------------------------------------- */

/* A client, the remote channels it attached and its transfers are used by one thread at a
 * time: a thread of its own needs a client of its own. */
typedef struct dragon_client dragon_client_t;

/* socket_path NULL: $DRAGON_SOCKET, else /run/dragon/UID/dragond.sock, else the runtime dir's. */
dragon_status_t dragon_client_connect(const char* socket_path, dragon_client_t** out_client);
/* Disconnects: objects this client holds references to are released unless named or shared. */
void dragon_client_close(dragon_client_t* client);

/* Objects. `name` may be NULL (no name). Attach by descriptor (desc) or by name (desc NULL). */
dragon_status_t dragon_client_pool_create(dragon_client_t* client, uint64_t size, const char* name,
                                          dragon_pool_t** out_pool);
dragon_status_t dragon_client_pool_attach(dragon_client_t* client, const dragon_descriptor_t* desc,
                                          const char* name, dragon_pool_t** out_pool);
dragon_status_t dragon_client_channel_create(dragon_client_t* client, dragon_pool_t* pool,
                                             uint32_t capacity, uint32_t inline_size,
                                             const char* name, dragon_channel_t** out_channel);
dragon_status_t dragon_client_channel_attach(dragon_client_t* client,
                                             const dragon_descriptor_t* desc, const char* name,
                                             dragon_channel_t** out_channel);
dragon_status_t dragon_client_detach(dragon_client_t* client, const dragon_descriptor_t* desc);
dragon_status_t dragon_client_destroy(dragon_client_t* client, const dragon_descriptor_t* desc);
dragon_status_t dragon_client_register_name(dragon_client_t* client, const char* name,
                                            const dragon_descriptor_t* desc);
dragon_status_t dragon_client_lookup_name(dragon_client_t* client, const char* name,
                                          dragon_descriptor_t* out_desc);

/* Processes. */
enum {
  DRAGON_STDIO_INHERIT = 0, /* dragond's own */
  DRAGON_STDIO_CAPTURE = 1, /* lines to this client's output handler */
  DRAGON_STDIO_NULL = 2,
  DRAGON_STDIO_FILE = 3,
  DRAGON_STDIO_PASSED = 4 /* this process's fd (stdin_fd...), lent to the child */
};

typedef struct dragon_spawn_options {
  const char* const* argv; /* NULL-terminated; argv[0] is the program (looked up in PATH) */
  const char* const* env;  /* NULL-terminated "NAME=value"; NULL: this process's environment */
  const char* cwd;         /* NULL: this process's */
  int stdin_mode, stdout_mode, stderr_mode; /* DRAGON_STDIO_* */
  const char* stdin_file;
  const char* stdout_file;
  const char* stderr_file;
  int stdin_fd, stdout_fd, stderr_fd; /* for DRAGON_STDIO_PASSED */
  const char* label;                  /* prefix of captured lines; "{puid}" is replaced */
  uint64_t group;                     /* join this group; 0: none (a new one when count > 1) */
  uint32_t count;                     /* 0 or 1: one process */
} dragon_spawn_options_t;

/* Defaults: stdin null, stdout and stderr captured, one process. */
void dragon_spawn_options_init(dragon_spawn_options_t* options);

typedef struct dragon_process {
  uint64_t puid;
  int32_t pid;
  uint64_t group;
} dragon_process_t;

typedef struct dragon_exit {
  uint64_t puid;
  int32_t exit_code; /* when it exited */
  int32_t signal;    /* when a signal ended it, else 0 */
} dragon_exit_t;

typedef struct dragon_process_entry {
  uint64_t puid;
  int32_t pid;
  int32_t running;
  int32_t exit_code;
  int32_t signal;
  uint64_t group;
  uint64_t job;
} dragon_process_entry_t;

/* Starts options->count processes; writes up to `capacity` of them and their number. */
dragon_status_t dragon_client_spawn(dragon_client_t* client, const dragon_spawn_options_t* options,
                                    dragon_process_t* out_processes, size_t capacity,
                                    size_t* out_count);
/* Multi-node jobs (docs/cluster.md). dragon_client_spawn starts processes on the caller's node;
 * dragon_client_spawn_on on node `node` (DRAGON_NODE_ROUND_ROBIN: the next live node in turn,
 * weighted by the CPUs the job was granted on each).
 * A node not in the job is DRAGON_NOT_FOUND; on another node, PASSED streams become CAPTURE
 * (stdin: NULL) and their output comes back through that node's launcher. Waits, signals and
 * listings take processes of any node. */
#define DRAGON_NODE_ROUND_ROBIN UINT32_MAX
dragon_status_t dragon_client_spawn_on(dragon_client_t* client,
                                       const dragon_spawn_options_t* options, uint32_t node,
                                       dragon_process_t* out_processes, size_t capacity,
                                       size_t* out_count);

typedef struct dragon_node {
  uint32_t node;
  uint32_t cpus;      /* granted to the job there */
  char hostname[256]; /* NUL-terminated, truncated if longer */
} dragon_node_t;

/* The nodes of the caller's job (one entry, this node, outside a multi-node job): writes up to
 * `capacity` of them and their number. */
dragon_status_t dragon_client_nodes(dragon_client_t* client, dragon_node_t* out_nodes,
                                    size_t capacity, size_t* out_count);

/* Remote memory (docs/cluster.md): copies `length` bytes from `from` to `to`, each an allocation
 * of a pool (its descriptor and the allocation's offset) plus an offset within it. put: `from`
 * is of the caller's node, `to` of any node; get: `from` of any node, `to` of the caller's.
 * Returns at once with a transfer; dragon_transfer_wait gives its outcome (DRAGON_TIMEOUT while
 * it goes on), dragon_transfer_free forgets it (a transfer not waited for still completes).
 * A transfer must be freed before its client is closed. */
typedef struct dragon_transfer dragon_transfer_t;
typedef struct dragon_memory_range {
  dragon_descriptor_t pool;
  uint64_t allocation; /* the allocation's offset (dragon_allocation_t.offset) */
  uint64_t offset;     /* from the start of the allocation */
} dragon_memory_range_t;
dragon_status_t dragon_client_put(dragon_client_t* client, const dragon_memory_range_t* from,
                                  const dragon_memory_range_t* to, uint64_t length,
                                  dragon_transfer_t** out_transfer);
dragon_status_t dragon_client_get(dragon_client_t* client, const dragon_memory_range_t* from,
                                  const dragon_memory_range_t* to, uint64_t length,
                                  dragon_transfer_t** out_transfer);
dragon_status_t dragon_transfer_wait(dragon_transfer_t* transfer, int64_t timeout_ns);
void dragon_transfer_free(dragon_transfer_t* transfer);

/* dragon_channel_wait_any over channels of this node and of other nodes together (remote ones
 * attached through a client): waits until at least one item is ready and sets *out_ready to
 * how many are (0 when the timeout passed first); DRAGON_NODE_LOST when a remote channel's
 * node is lost. At most 63 items. */
dragon_status_t dragon_client_wait_any(dragon_client_t* client, dragon_wait_item_t* items,
                                       size_t count, int64_t timeout_ns, size_t* out_ready);

/* Waits for all `count` processes; out_exits has room for `count`. */
dragon_status_t dragon_client_wait(dragon_client_t* client, const uint64_t* puids, size_t count,
                                   int64_t timeout_ns, dragon_exit_t* out_exits);
dragon_status_t dragon_client_signal(dragon_client_t* client, const uint64_t* puids, size_t count,
                                     int signal);
dragon_status_t dragon_client_signal_group(dragon_client_t* client, uint64_t group, int signal);
/* Writes up to `capacity` entries and the total number in *out_count. */
dragon_status_t dragon_client_list_processes(dragon_client_t* client,
                                             dragon_process_entry_t* out_entries, size_t capacity,
                                             size_t* out_count);
/* Ends this client's job (SIGTERM, SIGKILL after the grace period; at once if `now`). */
dragon_status_t dragon_client_end_job(dragon_client_t* client, int now);

/* Captured output: called during client calls and dragon_client_pump. */
typedef void (*dragon_output_fn)(void* context, uint64_t puid, int is_stderr, const char* line,
                                 size_t length);
dragon_status_t dragon_client_set_output_handler(dragon_client_t* client, dragon_output_fn fn,
                                                 void* context);
dragon_status_t dragon_client_pump(dragon_client_t* client, int64_t timeout_ns);

#ifdef __cplusplus
}
#endif
/* NOLINTEND(readability-identifier-naming) */

#endif /* DRAGON_DRAGON_H */
