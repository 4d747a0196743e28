// SPDX-License-Identifier: MIT
// The C ABI over the C++ API. Every entry is noexcept: a failure (even std::bad_alloc) becomes
// a status code, and its message is kept per thread for dragon_last_error().
#include <dragon/channel.hpp>
#include <dragon/dragon.h>
#include <dragon/pool.hpp>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <new>
#include <string>
#include <unistd.h>
#include <vector>

#include "capi/internal.hpp"

namespace dragon::capi {

std::string& lastError() noexcept {
  thread_local std::string message;
  return message;
}

}  // namespace dragon::capi

using namespace dragon::capi;  // NOLINT: this file implements the C ABI on those helpers

extern "C" {

const char* dragon_status_name(dragon_status_t status) {
  return dragon::statusCodeName(static_cast<dragon::StatusCode>(status)).data();
}

const char* dragon_last_error(void) { return dragon::capi::lastError().c_str(); }

dragon_status_t dragon_pool_create(uint64_t size, dragon_pool_t** out_pool) {
  return guarded([&] {
    if (out_pool == nullptr) {
      return invalid("out_pool is NULL");
    }
    dragon::PoolOptions o;
    o.size = size;
    auto p = dragon::Pool::create(o);
    if (!p) {
      return fail(p.error());
    }
    *out_pool = new dragon_pool{std::make_shared<dragon::Pool>(std::move(*p))};
    return DRAGON_OK;
  });
}

dragon_status_t dragon_pool_attach(int fd, const dragon_descriptor_t* desc,
                                   dragon_pool_t** out_pool) {
  return guarded([&] {
    if (desc == nullptr || out_pool == nullptr) {
      return invalid("desc or out_pool is NULL");
    }
    auto d = toDesc(desc);
    if (!d) {
      return fail(d.error());
    }
    // A copy is attached, so that a failure leaves the caller's fd open (it is the caller's
    // until the attach succeeds); on success the caller's is closed, as taken over.
    const int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) {
      return fail(dragon::Status::fromErrno("fd", errno));
    }
    auto p = dragon::Pool::attach(dragon::UniqueFd(copy), *d);
    if (!p) {
      return fail(p.error());
    }
    *out_pool = new dragon_pool{std::make_shared<dragon::Pool>(std::move(*p))};
    (void)close(fd);
    return DRAGON_OK;
  });
}

void dragon_pool_detach(dragon_pool_t* pool) { delete pool; }

dragon_status_t dragon_pool_fd(const dragon_pool_t* pool, int* out_fd) {
  return guarded([&] {
    if (pool == nullptr || out_fd == nullptr) {
      return invalid("pool or out_fd is NULL");
    }
    if (pool->pool->fd() < 0) {
      return fail(dragon::Status(dragon::StatusCode::NotFound,
                                 "this process holds no fd for the pool (a client maps the pools "
                                 "dragond grants it and keeps no fd)"));
    }
    *out_fd = pool->pool->fd();
    return DRAGON_OK;
  });
}

dragon_status_t dragon_pool_descriptor(const dragon_pool_t* pool, dragon_descriptor_t* out_desc) {
  return guarded([&] {
    if (pool == nullptr || out_desc == nullptr) {
      return invalid("pool or out_desc is NULL");
    }
    fromDesc(pool->pool->descriptor(), out_desc);
    return DRAGON_OK;
  });
}

dragon_status_t dragon_pool_alloc(dragon_pool_t* pool, uint64_t size, int64_t timeout_ns,
                                  dragon_allocation_t* out_alloc) {
  return guarded([&] {
    if (pool == nullptr || out_alloc == nullptr) {
      return invalid("pool or out_alloc is NULL");
    }
    auto a = pool->pool->alloc(size, toTimeout(timeout_ns));
    if (!a) {
      return fail(a.error());
    }
    *out_alloc = {a->poolId, a->offset, a->size};
    return DRAGON_OK;
  });
}

dragon_status_t dragon_pool_free(dragon_pool_t* pool, const dragon_allocation_t* alloc) {
  return guarded([&] {
    if (pool == nullptr || alloc == nullptr) {
      return invalid("pool or alloc is NULL");
    }
    dragon::Status st = pool->pool->free(toAlloc(alloc));
    return st.isOk() ? DRAGON_OK : fail(st);
  });
}

dragon_status_t dragon_pool_pointer(dragon_pool_t* pool, const dragon_allocation_t* alloc,
                                    void** out_ptr) {
  return guarded([&] {
    if (pool == nullptr || alloc == nullptr || out_ptr == nullptr) {
      return invalid("pool, alloc or out_ptr is NULL");
    }
    if (alloc->pool_id != pool->pool->id()) {
      return invalid("allocation belongs to another pool");
    }
    auto a = pool->pool->allocationAt(alloc->offset);
    if (!a) {
      return fail(a.error());
    }
    *out_ptr = pool->pool->pointer(*a);
    return DRAGON_OK;
  });
}

dragon_status_t dragon_pool_stats(dragon_pool_t* pool, dragon_pool_stats_t* out_stats) {
  return guarded([&] {
    if (pool == nullptr || out_stats == nullptr) {
      return invalid("pool or out_stats is NULL");
    }
    auto s = pool->pool->stats();
    if (!s) {
      return fail(s.error());
    }
    *out_stats = {s->totalBytes,      s->usedBytes,       s->freeBytes,
                  s->largestFreeBlock, s->allocationCount, s->freeBlockCount};
    return DRAGON_OK;
  });
}

dragon_status_t dragon_pool_reclaim(dragon_pool_t* pool, uint64_t* out_freed) {
  return guarded([&] {
    if (pool == nullptr) {
      return invalid("pool is NULL");
    }
    auto n = dragon::Channel::reclaimOrphans(*pool->pool);
    if (!n) {
      return fail(n.error());
    }
    if (out_freed != nullptr) {
      *out_freed = *n;
    }
    return DRAGON_OK;
  });
}

dragon_status_t dragon_channel_create(dragon_pool_t* pool, uint32_t capacity, uint32_t inline_size,
                                      dragon_channel_t** out_channel) {
  return guarded([&] {
    if (pool == nullptr || out_channel == nullptr) {
      return invalid("pool or out_channel is NULL");
    }
    dragon::ChannelOptions o;
    o.capacity = capacity;
    o.inlineSize = inline_size;
    auto c = dragon::Channel::create(*pool->pool, o);
    if (!c) {
      return fail(c.error());
    }
    *out_channel = new dragon_channel{pool->pool, std::move(*c), nullptr};
    return DRAGON_OK;
  });
}

dragon_status_t dragon_channel_attach(dragon_pool_t* pool, const dragon_descriptor_t* desc,
                                      dragon_channel_t** out_channel) {
  return guarded([&] {
    if (pool == nullptr || desc == nullptr || out_channel == nullptr) {
      return invalid("pool, desc or out_channel is NULL");
    }
    auto d = toDesc(desc);
    if (!d) {
      return fail(d.error());
    }
    auto c = dragon::Channel::attach(*pool->pool, *d);
    if (!c) {
      return fail(c.error());
    }
    *out_channel = new dragon_channel{pool->pool, std::move(*c), nullptr};
    return DRAGON_OK;
  });
}

void dragon_channel_detach(dragon_channel_t* channel) { delete channel; }

dragon_status_t dragon_channel_destroy(dragon_channel_t* channel) {
  return guarded([&] {
    if (channel == nullptr) {
      return invalid("channel is NULL");
    }
    if (channel->remote) {
      return invalid("a channel of another node is destroyed with dragon_client_destroy");
    }
    dragon::Status st = channel->channel->destroy();
    if (!st.isOk()) {
      return fail(st);  // the handle stays the caller's, as on every other failure
    }
    delete channel;
    return DRAGON_OK;
  });
}

dragon_status_t dragon_channel_descriptor(const dragon_channel_t* channel,
                                          dragon_descriptor_t* out_desc) {
  return guarded([&] {
    if (channel == nullptr || out_desc == nullptr) {
      return invalid("channel or out_desc is NULL");
    }
    fromDesc(channel->remote ? channel->remote->descriptor() : channel->channel->descriptor(),
             out_desc);
    return DRAGON_OK;
  });
}

dragon_status_t dragon_channel_send(dragon_channel_t* channel, const void* data, size_t length,
                                    int64_t timeout_ns) {
  return guarded([&] {
    if (channel == nullptr || (data == nullptr && length > 0)) {
      return invalid("channel or data is NULL");
    }
    const std::span<const std::byte> msg{static_cast<const std::byte*>(data), length};
    dragon::Status st = channel->remote ? channel->remote->send(msg, toTimeout(timeout_ns))
                                        : channel->channel->send(msg, toTimeout(timeout_ns));
    return st.isOk() ? DRAGON_OK : fail(st);
  });
}

dragon_status_t dragon_channel_send_block(dragon_channel_t* channel,
                                          const dragon_allocation_t* alloc, size_t length,
                                          int64_t timeout_ns) {
  return guarded([&] {
    if (channel == nullptr || alloc == nullptr) {
      return invalid("channel or alloc is NULL");
    }
    if (channel->remote) {
      return invalid("a block is sent only to a channel of its own pool's node");
    }
    dragon::Status st = channel->channel->sendBlock(toAlloc(alloc), length, toTimeout(timeout_ns));
    return st.isOk() ? DRAGON_OK : fail(st);
  });
}

dragon_status_t dragon_channel_recv(dragon_channel_t* channel, void* buffer, size_t capacity,
                                    size_t* out_length, int64_t timeout_ns) {
  return guarded([&] {
    if (channel == nullptr || out_length == nullptr || (buffer == nullptr && capacity > 0)) {
      return invalid("channel, buffer or out_length is NULL");
    }
    const std::span<std::byte> buf{static_cast<std::byte*>(buffer), capacity};
    auto n = channel->remote ? channel->remote->recv(buf, toTimeout(timeout_ns))
                             : channel->channel->recv(buf, toTimeout(timeout_ns));
    if (!n) {
      return fail(n.error());
    }
    *out_length = *n;
    return DRAGON_OK;
  });
}

dragon_status_t dragon_channel_recv_message(dragon_channel_t* channel, int64_t timeout_ns,
                                            dragon_message_t** out_message) {
  return guarded([&] {
    if (channel == nullptr || out_message == nullptr) {
      return invalid("channel or out_message is NULL");
    }
    if (channel->remote) {
      return invalid("a message of another node's channel is received with dragon_channel_recv");
    }
    auto* m = new dragon_message{};
    m->keep = channel->keep;
    dragon::Status st = channel->channel->recv(m->message, toTimeout(timeout_ns));
    if (!st.isOk()) {
      delete m;
      return fail(st);
    }
    *out_message = m;
    return DRAGON_OK;
  });
}

dragon_status_t dragon_message_data(const dragon_message_t* message, const void** out_data,
                                    size_t* out_length) {
  return guarded([&] {
    if (message == nullptr || out_data == nullptr || out_length == nullptr) {
      return invalid("message, out_data or out_length is NULL");
    }
    *out_data = message->message.data().data();
    *out_length = message->message.size();
    return DRAGON_OK;
  });
}

void dragon_message_release(dragon_message_t* message) { delete message; }

dragon_status_t dragon_channel_close(dragon_channel_t* channel) {
  return guarded([&] {
    if (channel == nullptr) {
      return invalid("channel is NULL");
    }
    dragon::Status st = channel->remote ? channel->remote->close() : channel->channel->close();
    return st.isOk() ? DRAGON_OK : fail(st);
  });
}

dragon_status_t dragon_channel_poll(dragon_channel_t* channel, uint32_t events, int64_t timeout_ns,
                                    uint32_t* out_ready) {
  return guarded([&] {
    if (channel == nullptr || out_ready == nullptr || (events & 3u) == 0 || events > 3u) {
      return invalid("channel or out_ready is NULL, or no events");
    }
    const auto ev = static_cast<dragon::WaitFor>(events);
    auto r = channel->remote ? channel->remote->poll(ev, toTimeout(timeout_ns)) : [&] {
      dragon::Channel::WaitItem item{&*channel->channel, ev, {}};
      auto n = dragon::Channel::waitAny(std::span(&item, 1), toTimeout(timeout_ns));
      return n.has_value() ? dragon::Result<dragon::WaitFor>(*n == 0 ? dragon::WaitFor{} : item.ready)
                           : dragon::Result<dragon::WaitFor>(n.error());
    }();
    if (!r) {
      return fail(r.error());
    }
    *out_ready = static_cast<uint32_t>(*r);
    return DRAGON_OK;
  });
}

dragon_status_t dragon_channel_wait_any(dragon_wait_item_t* items, size_t count,
                                        int64_t timeout_ns, size_t* out_ready) {
  return guarded([&] {
    if ((items == nullptr && count > 0) || out_ready == nullptr) {
      return invalid("items or out_ready is NULL");
    }
    if (count > dragon::Channel::kMaxWaitItems) {
      return invalid("too many wait items");
    }
    dragon::Channel::WaitItem w[dragon::Channel::kMaxWaitItems];
    for (size_t i = 0; i < count; ++i) {
      if (items[i].channel == nullptr || (items[i].events & 3u) == 0 || items[i].events > 3u) {
        return invalid("wait item without a channel or events");
      }
      if (items[i].channel->remote) {
        return invalid("a channel of another node is waited on with dragon_channel_poll");
      }
      w[i].channel = &*items[i].channel->channel;
      w[i].events = static_cast<dragon::WaitFor>(items[i].events);
    }
    auto n = dragon::Channel::waitAny({w, count}, toTimeout(timeout_ns));
    if (!n) {
      return fail(n.error());
    }
    for (size_t i = 0; i < count; ++i) {
      items[i].ready = static_cast<uint32_t>(w[i].ready);
    }
    *out_ready = *n;
    return DRAGON_OK;
  });
}

dragon_status_t dragon_descriptor_to_string(const dragon_descriptor_t* desc, char* buffer,
                                            size_t capacity) {
  return guarded([&] {
    if (desc == nullptr || buffer == nullptr) {
      return invalid("desc or buffer is NULL");
    }
    auto d = toDesc(desc);
    if (!d) {
      return fail(d.error());
    }
    const std::string s = d->toString();
    if (s.size() + 1 > capacity) {
      return invalid("buffer too small for the descriptor string (needs 72 bytes)");
    }
    std::memcpy(buffer, s.c_str(), s.size() + 1);
    return DRAGON_OK;
  });
}

dragon_status_t dragon_descriptor_from_string(const char* text, dragon_descriptor_t* out_desc) {
  return guarded([&] {
    if (text == nullptr || out_desc == nullptr) {
      return invalid("text or out_desc is NULL");
    }
    auto d = dragon::ObjectDescriptor::fromString(text);
    if (!d) {
      return fail(d.error());
    }
    fromDesc(*d, out_desc);
    return DRAGON_OK;
  });
}

}  // extern "C"
