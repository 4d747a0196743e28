/* SPDX-License-Identifier: MIT
 * The C ABI, used from C: pools, channels (inline, large, zero copy), waiting, descriptors,
 * and the error paths. Exits non-zero on the first failed check. */
#include <dragon/dragon.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, \
              __LINE__, #cond, dragon_last_error());                         \
      failures++;                                                            \
    }                                                                        \
  } while (0)

int main(void) {
  dragon_pool_t* pool = NULL;
  CHECK(dragon_pool_create(100, &pool) == DRAGON_INVALID_ARGUMENT);
  CHECK(strstr(dragon_last_error(), "outside") != NULL);
  CHECK(pool == NULL);
  CHECK(dragon_pool_create(4u << 20, &pool) == DRAGON_OK);
  if (pool == NULL) return 1;

  dragon_allocation_t a;
  void* p = NULL;
  CHECK(dragon_pool_alloc(pool, 1000, DRAGON_TIMEOUT_NONE, &a) == DRAGON_OK);
  CHECK(dragon_pool_pointer(pool, &a, &p) == DRAGON_OK && p != NULL);
  memset(p, 7, 1000);
  dragon_pool_stats_t st;
  CHECK(dragon_pool_stats(pool, &st) == DRAGON_OK && st.allocation_count == 1);
  CHECK(dragon_pool_free(pool, &a) == DRAGON_OK);
  CHECK(dragon_pool_free(pool, &a) == DRAGON_INVALID_ARGUMENT);
  CHECK(dragon_pool_alloc(pool, 0, 0, &a) == DRAGON_INVALID_ARGUMENT);
  CHECK(dragon_pool_alloc(NULL, 10, 0, &a) == DRAGON_INVALID_ARGUMENT);
  CHECK(strcmp(dragon_status_name(DRAGON_POOL_EXHAUSTED), "PoolExhausted") == 0);

  dragon_channel_t* ch = NULL;
  CHECK(dragon_channel_create(pool, 0, 64, &ch) == DRAGON_INVALID_ARGUMENT);
  CHECK(dragon_channel_create(pool, 2, 64, &ch) == DRAGON_OK);
  if (ch == NULL) return 1;

  char buf[5000];
  size_t len = 0;
  CHECK(dragon_channel_recv(ch, buf, sizeof buf, &len, DRAGON_TIMEOUT_NONE) == DRAGON_WOULD_BLOCK);
  CHECK(dragon_channel_recv(ch, buf, sizeof buf, &len, 1000000) == DRAGON_TIMEOUT);
  CHECK(dragon_channel_send(ch, "hello", 5, DRAGON_TIMEOUT_FOREVER) == DRAGON_OK);
  char big[4000];
  memset(big, 'b', sizeof big);
  CHECK(dragon_channel_send(ch, big, sizeof big, DRAGON_TIMEOUT_FOREVER) == DRAGON_OK);
  CHECK(dragon_channel_send(ch, "x", 1, DRAGON_TIMEOUT_NONE) == DRAGON_CHANNEL_FULL);

  dragon_wait_item_t items[1] = {{ch, DRAGON_READABLE | DRAGON_WRITABLE, 0}};
  size_t ready = 0;
  CHECK(dragon_channel_wait_any(items, 1, DRAGON_TIMEOUT_NONE, &ready) == DRAGON_OK);
  CHECK(ready == 1 && items[0].ready == DRAGON_READABLE);
  /* Poll of one channel: readable now (two messages), not writable (full). */
  uint32_t polled = 0;
  CHECK(dragon_channel_poll(ch, DRAGON_READABLE | DRAGON_WRITABLE, DRAGON_TIMEOUT_NONE, &polled) ==
        DRAGON_OK);
  CHECK(polled == DRAGON_READABLE);
  CHECK(dragon_channel_poll(ch, DRAGON_WRITABLE, 1000000, &polled) == DRAGON_OK);
  CHECK(polled == 0);
  CHECK(dragon_channel_poll(ch, 0, DRAGON_TIMEOUT_NONE, &polled) == DRAGON_INVALID_ARGUMENT);
  /* Nothing to wait on: the timeout, or an error without one (it would never return). */
  CHECK(dragon_channel_wait_any(NULL, 0, 1000000, &ready) == DRAGON_OK && ready == 0);
  CHECK(dragon_channel_wait_any(NULL, 0, DRAGON_TIMEOUT_FOREVER, &ready) ==
        DRAGON_INVALID_ARGUMENT);
  /* A channel's descriptor, and NULL refused. */
  dragon_descriptor_t chDesc;
  CHECK(dragon_channel_descriptor(ch, &chDesc) == DRAGON_OK);
  CHECK(dragon_channel_descriptor(NULL, &chDesc) == DRAGON_INVALID_ARGUMENT);

  CHECK(dragon_channel_recv(ch, buf, sizeof buf, &len, DRAGON_TIMEOUT_FOREVER) == DRAGON_OK);
  CHECK(len == 5 && memcmp(buf, "hello", 5) == 0);
  CHECK(dragon_channel_recv(ch, buf, 10, &len, DRAGON_TIMEOUT_NONE) == DRAGON_MESSAGE_TOO_LARGE);
  CHECK(dragon_channel_recv(ch, buf, sizeof buf, &len, DRAGON_TIMEOUT_NONE) == DRAGON_OK);
  CHECK(len == sizeof big && memcmp(buf, big, sizeof big) == 0);

  /* Zero copy: the receiver reads the sender's block in place. */
  CHECK(dragon_pool_alloc(pool, 1u << 20, DRAGON_TIMEOUT_NONE, &a) == DRAGON_OK);
  CHECK(dragon_pool_pointer(pool, &a, &p) == DRAGON_OK);
  memset(p, 'z', 1u << 20);
  CHECK(dragon_channel_send_block(ch, &a, 1u << 20, DRAGON_TIMEOUT_FOREVER) == DRAGON_OK);
  dragon_message_t* m = NULL;
  CHECK(dragon_channel_recv_message(ch, DRAGON_TIMEOUT_FOREVER, &m) == DRAGON_OK);
  const void* data = NULL;
  CHECK(dragon_message_data(m, &data, &len) == DRAGON_OK);
  CHECK(data == p && len == (1u << 20));
  dragon_message_release(m);
  CHECK(dragon_pool_stats(pool, &st) == DRAGON_OK && st.allocation_count == 1);

  /* Descriptors: to text and back, and a second handle through them. */
  dragon_descriptor_t d, d2;
  char text[80];
  CHECK(dragon_channel_descriptor(ch, &d) == DRAGON_OK);
  CHECK(dragon_descriptor_to_string(&d, text, sizeof text) == DRAGON_OK);
  CHECK(strncmp(text, "dragon:", 7) == 0);
  CHECK(dragon_descriptor_to_string(&d, text, 10) == DRAGON_INVALID_ARGUMENT);
  CHECK(dragon_descriptor_from_string(text, &d2) == DRAGON_OK);
  CHECK(memcmp(&d, &d2, sizeof d) == 0);
  CHECK(dragon_descriptor_from_string("dragon:nothex", &d2) == DRAGON_INVALID_ARGUMENT);
  dragon_channel_t* ch2 = NULL;
  CHECK(dragon_channel_attach(pool, &d, &ch2) == DRAGON_OK);
  CHECK(dragon_channel_send(ch2, "via2", 4, DRAGON_TIMEOUT_FOREVER) == DRAGON_OK);
  CHECK(dragon_channel_recv(ch, buf, sizeof buf, &len, DRAGON_TIMEOUT_FOREVER) == DRAGON_OK);
  CHECK(len == 4 && memcmp(buf, "via2", 4) == 0);
  dragon_channel_detach(ch2);

  /* A pool attached again through a duplicated fd sees the same memory. */
  dragon_descriptor_t pd;
  int fd = -1;
  CHECK(dragon_pool_descriptor(pool, &pd) == DRAGON_OK);
  CHECK(dragon_pool_fd(pool, &fd) == DRAGON_OK && fd >= 0);
  dragon_pool_t* pool2 = NULL;
  CHECK(dragon_pool_attach(dup(fd), &pd, &pool2) == DRAGON_OK);
  CHECK(dragon_channel_attach(pool2, &d, &ch2) == DRAGON_OK);
  CHECK(dragon_channel_send(ch2, "p2", 2, DRAGON_TIMEOUT_FOREVER) == DRAGON_OK);
  CHECK(dragon_channel_recv(ch, buf, sizeof buf, &len, DRAGON_TIMEOUT_FOREVER) == DRAGON_OK);
  CHECK(len == 2 && memcmp(buf, "p2", 2) == 0);
  dragon_channel_detach(ch2);
  dragon_pool_detach(pool2);
  /* A failed attach (a channel's descriptor, not a pool's) leaves the caller's fd open. */
  int kept = dup(fd);
  CHECK(dragon_pool_attach(kept, &d, &pool2) == DRAGON_INVALID_ARGUMENT);
  CHECK(fcntl(kept, F_GETFD) != -1);
  close(kept);

  /* A block sent with a size larger than the pool's record of it is refused here, not
   * reported as corrupt to the receiver. */
  dragon_allocation_t small;
  CHECK(dragon_pool_alloc(pool, 4096, DRAGON_TIMEOUT_NONE, &small) == DRAGON_OK);
  dragon_allocation_t forged = small;
  forged.size = 1u << 20;
  CHECK(dragon_channel_send_block(ch, &forged, 1u << 20, DRAGON_TIMEOUT_NONE) ==
        DRAGON_INVALID_ARGUMENT);
  CHECK(dragon_pool_free(pool, &small) == DRAGON_OK);

  /* A received block message keeps its pool mapped after the channel's and the pool's
   * handles are gone. */
  {
    dragon_pool_t* p3 = NULL;
    dragon_channel_t* c3 = NULL;
    dragon_allocation_t b3;
    void* at = NULL;
    CHECK(dragon_pool_create(4u << 20, &p3) == DRAGON_OK);
    CHECK(p3 != NULL && dragon_channel_create(p3, 2, 64, &c3) == DRAGON_OK);
    CHECK(c3 != NULL && dragon_pool_alloc(p3, 1u << 20, DRAGON_TIMEOUT_NONE, &b3) == DRAGON_OK);
    CHECK(dragon_pool_pointer(p3, &b3, &at) == DRAGON_OK);
    memset(at, 'k', 1u << 20);
    CHECK(dragon_channel_send_block(c3, &b3, 1u << 20, DRAGON_TIMEOUT_FOREVER) == DRAGON_OK);
    dragon_message_t* m3 = NULL;
    CHECK(dragon_channel_recv_message(c3, DRAGON_TIMEOUT_FOREVER, &m3) == DRAGON_OK);
    dragon_channel_detach(c3);
    dragon_pool_detach(p3);
    const void* got = NULL;
    size_t n3 = 0;
    CHECK(dragon_message_data(m3, &got, &n3) == DRAGON_OK && n3 == (1u << 20));
    CHECK(((const char*)got)[0] == 'k' && ((const char*)got)[n3 - 1] == 'k');
    dragon_message_release(m3);
  }

  uint64_t freed = 99;
  CHECK(dragon_pool_reclaim(pool, &freed) == DRAGON_OK && freed == 0);
  CHECK(dragon_channel_close(ch) == DRAGON_OK);
  CHECK(dragon_channel_send(ch, "x", 1, DRAGON_TIMEOUT_NONE) == DRAGON_CHANNEL_CLOSED);
  CHECK(dragon_channel_recv(ch, buf, sizeof buf, &len, DRAGON_TIMEOUT_FOREVER) ==
        DRAGON_CHANNEL_CLOSED);
  CHECK(dragon_channel_destroy(ch) == DRAGON_OK);
  CHECK(dragon_pool_stats(pool, &st) == DRAGON_OK && st.allocation_count == 0);
  dragon_pool_detach(pool);

  if (failures == 0) {
    printf("capi: all checks passed\n");
  }
  return failures == 0 ? 0 : 1;
}
