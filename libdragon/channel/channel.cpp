// SPDX-License-Identifier: MIT
#include <dragon/channel.hpp>

#include "base/futex.hpp"
#include "base/log.hpp"
#include "base/robust_mutex.hpp"
#include "channel/layout.hpp"

#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <new>
#include <sys/random.h>
#include <vector>

namespace dragon {

using detail::ChannelHeader;
using detail::Slot;
using detail::SlotKind;

struct Channel::SpinState {
  base::AdaptiveSpin send;
  base::AdaptiveSpin recv;
};

namespace {

Status lockChannel(pthread_mutex_t* m, const char* which, ChannelHeader* h) noexcept {
  switch (base::RobustMutex::lockOrGiveUp(m)) {
    case base::LockState::Locked:
      return Status::ok();
    case base::LockState::OwnerDied:
      if (m == &h->sendLock) {
        // A sender may have died after publishing its slot but before advancing tail.
        const std::uint64_t t = h->tail.load(std::memory_order_relaxed);
        if (detail::published(h, t)) {
          h->tail.store(t + 1, std::memory_order_release);
        }
      }
      base::RobustMutex::markConsistent(m);
      DRAGON_LOG(Info, "channel", "recovered the %s lock from a dead owner", which);
      return Status::ok();
    case base::LockState::Busy:
      return Status(StatusCode::WouldBlock, std::string("the channel's ") + which +
                                                " lock is held by another process");
    case base::LockState::Unrecoverable:
      break;
  }
  return Status(StatusCode::Corrupt, std::string("channel ") + which + " lock is unrecoverable");
}

// What a send or receive of a closed channel answers: a channel broken by breakHold() names
// the holder that went.
Status closedStatus(const ChannelHeader* h) {
  if (h->closed.load(std::memory_order_acquire) != detail::kClosedHolderGone) {
    return StatusCode::ChannelClosed;
  }
  const std::uint64_t w = h->holder.load(std::memory_order_acquire);
  const auto pid = static_cast<std::uint32_t>(w);
  const auto node = static_cast<std::uint32_t>(w >> 32);
  return Status(StatusCode::ChannelClosed,
                "broken: the process that held it (" +
                    (pid != 0 ? "pid " + std::to_string(pid) + " " : std::string("a process ")) +
                    "on node " + std::to_string(node) +
                    ") was killed, failed or lost with its node before giving it back");
}

std::uint64_t randomChannelId() {
  std::uint64_t id = 0;
  while (id == 0) {
    if (getrandom(&id, sizeof id, 0) != static_cast<ssize_t>(sizeof id)) {
      id = static_cast<std::uint64_t>(monotonicNowNs()) | 1;
    }
  }
  return id;
}

}  // namespace

namespace detail {
Status lockSend(ChannelHeader* h) noexcept { return lockChannel(&h->sendLock, "send", h); }
Status lockRecv(ChannelHeader* h) noexcept { return lockChannel(&h->recvLock, "receive", h); }
}  // namespace detail

namespace {

// Copies a large message into pool memory with non-temporal stores: the receiver, on another
// core, then reads it from memory instead of snooping it out of the sender's private caches,
// and the sender's caches are not flushed of its own working set.
void copyToPool(void* dst, const void* src, std::size_t n) noexcept {
#if defined(__x86_64__)
  constexpr std::size_t kThreshold = std::size_t{256} << 10;
  auto* d = static_cast<char*>(dst);
  const auto* sp = static_cast<const char*>(src);
  if (n >= kThreshold && (reinterpret_cast<std::uintptr_t>(d) & 15) == 0) {
    const std::size_t blocks = n / 64;
    for (std::size_t i = 0; i < blocks; ++i) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + 64 * i));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + 64 * i + 16));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + 64 * i + 32));
      const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sp + 64 * i + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + 64 * i), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + 64 * i + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + 64 * i + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + 64 * i + 48), e);
    }
    _mm_sfence();  // the streamed stores are visible before the slot that publishes them
    std::memcpy(d + 64 * blocks, sp + 64 * blocks, n - 64 * blocks);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

struct Taken {
  SlotKind kind = SlotKind::Inline;
  std::size_t length = 0;
  PoolAllocation block;
};

}  // namespace

Channel::Channel(Pool* pool, ChannelHeader* h, std::uint64_t offset)
    : pool_(pool), h_(h), offset_(offset), spin_(std::make_unique<SpinState>()) {}
Channel::Channel(Channel&&) noexcept = default;
Channel& Channel::operator=(Channel&&) noexcept = default;
Channel::~Channel() = default;

Result<Channel> Channel::create(Pool& pool, const ChannelOptions& o) {
  if (o.capacity == 0 || o.capacity > detail::kMaxCapacity) {
    return Status(StatusCode::InvalidArgument,
                  "channel capacity must be 1.." + std::to_string(detail::kMaxCapacity));
  }
  if (o.inlineSize > detail::kMaxInline) {
    return Status(StatusCode::InvalidArgument,
                  "channel inline size must be at most " + std::to_string(detail::kMaxInline));
  }
  const std::uint64_t stride = (sizeof(Slot) + o.inlineSize + 63) / 64 * 64;
  const std::uint64_t slotsOffset = sizeof(ChannelHeader);
  const std::uint64_t bytes = slotsOffset + stride * o.capacity;
  DRAGON_ASSIGN_OR_RETURN(PoolAllocation a, pool.allocAs(bytes, OwnerTag::object(), Timeout::none()));

  auto* h = new (pool.pointer(a)) ChannelHeader();
  h->version = detail::kChannelVersion;
  h->capacity = o.capacity;
  h->id = o.id != 0 ? o.id : randomChannelId();
  h->inlineSize = o.inlineSize;
  h->slotStride = static_cast<std::uint32_t>(stride);
  h->maxMessageSize = o.maxMessageSize != 0 ? o.maxMessageSize : pool.segmentSize();
  h->slotsOffset = slotsOffset;
  h->node = pool.node();
  h->tracksHolder = !o.trackHolder ? 0 : o.holderOwns ? 2 : 1;
  h->holder.store(0, std::memory_order_relaxed);
  // Pool memory is reused: no stale bytes may look like a published slot.
  for (std::uint32_t i = 0; i < o.capacity; ++i) {
    detail::slotAt(h, i)->seq.store(0, std::memory_order_relaxed);
  }
  Status st = base::RobustMutex::init(&h->sendLock);
  if (st.isOk()) {
    st = base::RobustMutex::init(&h->recvLock);
  }
  if (!st.isOk()) {
    (void)pool.free(a);
    return st;
  }
  std::atomic_ref<std::uint64_t>(h->magic).store(detail::kChannelMagic, std::memory_order_release);
  return Channel(&pool, h, a.offset);
}

Result<Channel> Channel::attach(Pool& pool, const ObjectDescriptor& d) {
  if (d.kind != ObjectKind::Channel) {
    return Status(StatusCode::InvalidArgument, "descriptor does not name a channel");
  }
  if (d.poolId != pool.id()) {
    return Status(StatusCode::InvalidArgument,
                  "channel lives in pool " + std::to_string(d.poolId) + ", not in pool " +
                      std::to_string(pool.id()));
  }
  auto a = pool.allocationAt(d.offset);
  if (!a.has_value() || a->size < sizeof(ChannelHeader)) {
    return Status(StatusCode::NotFound, "no channel at the descriptor's offset");
  }
  auto* h = static_cast<ChannelHeader*>(pool.pointer(*a));
  if (std::atomic_ref<std::uint64_t>(h->magic).load(std::memory_order_acquire) !=
          detail::kChannelMagic ||
      h->id != d.id) {
    return Status(StatusCode::NotFound, "no channel with id " + std::to_string(d.id) + " here");
  }
  // Exactly the layout create() makes (so no sum below can wrap, whatever the header says).
  if (h->version != detail::kChannelVersion || h->capacity == 0 ||
      h->capacity > detail::kMaxCapacity || h->inlineSize > detail::kMaxInline ||
      h->slotsOffset != sizeof(ChannelHeader) ||
      h->slotStride != (sizeof(Slot) + std::uint64_t{h->inlineSize} + 63) / 64 * 64 ||
      h->slotsOffset + std::uint64_t{h->slotStride} * h->capacity > a->size) {
    return Status(StatusCode::Corrupt, "channel header is inconsistent");
  }
  return Channel(&pool, h, d.offset);
}

ObjectDescriptor Channel::descriptor() const noexcept {
  ObjectDescriptor d;
  d.kind = ObjectKind::Channel;
  d.node = h_->node;
  d.id = h_->id;
  d.poolId = pool_->id();
  d.offset = offset_;
  return d;
}

std::uint64_t Channel::id() const noexcept { return h_->id; }
std::uint32_t Channel::capacity() const noexcept { return h_->capacity; }
std::uint32_t Channel::inlineSize() const noexcept { return h_->inlineSize; }
std::uint64_t Channel::maxMessageSize() const noexcept { return h_->maxMessageSize; }

bool Channel::isClosed() const noexcept { return h_->closed.load(std::memory_order_acquire) != 0; }
bool Channel::tracksHolder() const noexcept { return h_->tracksHolder != 0; }
std::uint64_t Channel::holder() const noexcept {
  return h_->tracksHolder != 0 ? h_->holder.load(std::memory_order_acquire) : 0;
}

std::size_t Channel::size() const noexcept {
  const std::uint64_t hd = h_->head.load(std::memory_order_acquire);
  const std::uint64_t t = h_->tail.load(std::memory_order_acquire);
  return t > hd ? static_cast<std::size_t>(t - hd) : 0;
}

bool Channel::readable() const noexcept {
  return detail::published(h_, h_->head.load(std::memory_order_acquire)) || isClosed();
}
bool Channel::writable() const noexcept { return size() < h_->capacity || isClosed(); }

Status Channel::trySendSlot(std::span<const std::byte> inlineMsg, const PoolAllocation* block,
                            std::size_t length) {
  {
    DRAGON_TRY(detail::lockSend(h_));
    base::RobustGuard guard(&h_->sendLock);
    if (h_->closed.load(std::memory_order_relaxed) != 0) {
      return closedStatus(h_);
    }
    const std::uint64_t t = h_->tail.load(std::memory_order_relaxed);
    if (t - h_->cachedHead >= h_->capacity) {
      h_->cachedHead = h_->head.load(std::memory_order_acquire);
      if (t - h_->cachedHead >= h_->capacity) {
        return StatusCode::ChannelFull;
      }
    }
    Slot* s = detail::slotAt(h_, t);
    if (block != nullptr) {
      (void)pool_->setOwner(*block, OwnerTag::channel(offset_));
      s->kind = SlotKind::Block;
      s->blockOffset = block->offset;
    } else {
      if (!inlineMsg.empty()) {
        std::memcpy(detail::inlineBytes(s), inlineMsg.data(), inlineMsg.size());
      }
      s->kind = SlotKind::Inline;
    }
    s->length = length;
    if (h_->tracksHolder != 0) {
      h_->holder.store(0, std::memory_order_relaxed);  // ordered before the commit below
    }
    s->seq.store(t + 1, std::memory_order_release);  // commit: receivers may take it now
    h_->tail.store(t + 1, std::memory_order_release);
  }
  base::publishFence();
  base::WaitWord::notify(h_->notEmpty);
  return Status::ok();
}

Status Channel::sendSlot(std::span<const std::byte> inlineMsg, const PoolAllocation* block,
                         std::size_t length, Timeout timeout) {
  Status st = trySendSlot(inlineMsg, block, length);
  if (st.code() != StatusCode::ChannelFull || timeout.isNone()) {
    return st;
  }
  const std::int64_t waitStart = monotonicNowNs();
  bool contended = false;
  if (spin_->send.spin([this] { return writable(); }) ||
      base::AdaptiveSpin::yieldWhile([this] { return writable(); }, contended)) {
    st = trySendSlot(inlineMsg, block, length);
    if (st.code() != StatusCode::ChannelFull) {
      return st;
    }
  }
  const Deadline deadline(timeout);
  for (;;) {
    const std::uint32_t armed = base::WaitWord::arm(h_->notFull);
    st = trySendSlot(inlineMsg, block, length);
    if (st.code() != StatusCode::ChannelFull) {
      spin_->send.learn(monotonicNowNs() - waitStart, contended);
      return st;
    }
    if (base::futexWait(&h_->notFull, armed, deadline) == base::WaitOutcome::TimedOut) {
      st = trySendSlot(inlineMsg, block, length);
      return st.code() == StatusCode::ChannelFull ? Status(StatusCode::Timeout) : st;
    }
  }
}

Status Channel::send(std::span<const std::byte> msg, Timeout timeout) {
  if (msg.size() > h_->maxMessageSize) {
    return Status(StatusCode::MessageTooLarge,
                  "message of " + std::to_string(msg.size()) + " bytes exceeds the channel's " +
                      std::to_string(h_->maxMessageSize) + "-byte limit");
  }
  if (msg.size() <= h_->inlineSize) {
    return sendSlot(msg, nullptr, msg.size(), timeout);
  }
  // Copy path for large messages: into a pool block of our own, then hand the block over.
  // Both steps share the caller's one deadline; once it has passed, a step still waits 1 ns
  // so the caller hears Timeout, not the PoolExhausted / ChannelFull of a try.
  const Deadline deadline(timeout);
  auto remaining = [&] {
    if (timeout.isNone() || timeout.isForever()) {
      return timeout;
    }
    const std::int64_t ns = deadline.monotonicNs() - monotonicNowNs();
    return Timeout::after(std::chrono::nanoseconds(ns > 0 ? ns : 1));
  };
  const Timeout allocTimeout = remaining();
  auto a = pool_->alloc(msg.size(), allocTimeout);
  if (!a.has_value()) {
    if (a.error().code() == StatusCode::InvalidArgument) {
      return Status(StatusCode::MessageTooLarge,
                    "message of " + std::to_string(msg.size()) + " bytes can never fit the pool");
    }
    return a.error();
  }
  copyToPool(pool_->pointer(*a), msg.data(), msg.size());
  Status st = sendSlot({}, &*a, msg.size(), remaining());
  if (!st.isOk()) {
    (void)pool_->free(*a);
  }
  return st;
}

Status Channel::sendBlock(const PoolAllocation& block, std::size_t length, Timeout timeout) {
  if (block.poolId != pool_->id()) {
    return Status(StatusCode::InvalidArgument, "block belongs to another pool");
  }
  if (length > block.size) {
    return Status(StatusCode::InvalidArgument, "length exceeds the block");
  }
  if (length > h_->maxMessageSize) {
    return Status(StatusCode::MessageTooLarge,
                  "message of " + std::to_string(length) + " bytes exceeds the channel's limit");
  }
  // The pool's own record of the block, not the caller's: a size the caller made up would
  // pass here and have the receiver report the message as corrupt (and drop it).
  auto real = pool_->allocationAt(block.offset);
  if (!real.has_value()) {
    return Status(StatusCode::InvalidArgument, "block is not a live allocation of the pool");
  }
  if (length > real->size) {
    return Status(StatusCode::InvalidArgument,
                  "length " + std::to_string(length) + " exceeds the block's " +
                      std::to_string(real->size) + " bytes");
  }
  return sendSlot({}, &*real, length, timeout);
}

namespace {

// Under the receive lock: consumes the head message. Inline bytes go to `dst` (room for `cap`);
// with `mustFit`, a message longer than `cap` stays queued and MessageTooLarge is returned.
// `holder`: the receiver's holder word, kept when the channel tracks its holder.
Status tryRecvSlot(Pool& pool, ChannelHeader* h, std::byte* dst, std::size_t cap, bool mustFit,
                   std::uint64_t holder, Taken& out) {
  {
    DRAGON_TRY(detail::lockRecv(h));
    base::RobustGuard guard(&h->recvLock);
    const std::uint64_t hd = h->head.load(std::memory_order_relaxed);
    // closed first: every send committed before close() is published by the time it shows.
    const bool closed = h->closed.load(std::memory_order_acquire) != 0;
    if (!detail::published(h, hd)) {
      return closed ? closedStatus(h) : Status(StatusCode::WouldBlock);
    }
    Slot* s = detail::slotAt(h, hd);
    out.kind = s->kind;
    out.length = s->length;
    if (mustFit && out.length > cap) {
      return Status(StatusCode::MessageTooLarge,
                    "next message has " + std::to_string(out.length) +
                        " bytes; the buffer holds " + std::to_string(cap));
    }
    Status bad;
    if (out.kind == SlotKind::Inline && out.length <= h->inlineSize) {
      if (out.length > 0) {
        std::memcpy(dst, detail::inlineBytes(s), out.length);
      }
    } else if (out.kind == SlotKind::Block) {
      auto a = pool.allocationAt(s->blockOffset);
      if (a.has_value() && a->size >= out.length) {
        out.block = *a;
      } else {
        bad = Status(StatusCode::Corrupt, "queued message names no live pool block");
      }
    } else {
      bad = Status(StatusCode::Corrupt, "queued message slot is malformed");
    }
    if (h->tracksHolder != 0) {
      h->holder.store(holder, std::memory_order_release);  // before the commit (layout.hpp)
    }
    h->head.store(hd + 1, std::memory_order_release);  // commit (a malformed slot is skipped)
    if (bad.isOk() && out.kind == SlotKind::Block) {
      (void)pool.setOwner(out.block, OwnerTag::self());
    }
    if (!bad.isOk()) {
      DRAGON_LOG(Error, "channel", "channel %llu: %s", static_cast<unsigned long long>(h->id),
                 bad.toString().c_str());
      return bad;
    }
  }
  base::publishFence();
  base::WaitWord::notify(h->notFull);
  return Status::ok();
}

}  // namespace

template <typename Take>
Status Channel::recvWith(Take&& take, Timeout timeout) {
  Status st = take();
  if (st.code() != StatusCode::WouldBlock || timeout.isNone()) {
    return st;
  }
  const std::int64_t waitStart = monotonicNowNs();
  bool contended = false;
  if (spin_->recv.spin([this] { return readable(); }) ||
      base::AdaptiveSpin::yieldWhile([this] { return readable(); }, contended)) {
    st = take();
    if (st.code() != StatusCode::WouldBlock) {
      return st;
    }
  }
  const Deadline deadline(timeout);
  for (;;) {
    const std::uint32_t armed = base::WaitWord::arm(h_->notEmpty);
    st = take();
    if (st.code() != StatusCode::WouldBlock) {
      spin_->recv.learn(monotonicNowNs() - waitStart, contended);
      return st;
    }
    if (base::futexWait(&h_->notEmpty, armed, deadline) == base::WaitOutcome::TimedOut) {
      st = take();
      return st.code() == StatusCode::WouldBlock ? Status(StatusCode::Timeout) : st;
    }
  }
}

Result<std::size_t> Channel::recv(std::span<std::byte> buf, Timeout timeout) {
  Taken tk;
  Status st = recvWith(
      [&, holder = holderWordOfReceiver()] {
        return tryRecvSlot(*pool_, h_, buf.data(), buf.size(), true, holder, tk);
      },
      timeout);
  if (!st.isOk()) {
    return st;
  }
  if (tk.kind == SlotKind::Block) {
    std::memcpy(buf.data(), pool_->pointer(tk.block), tk.length);
    (void)pool_->free(tk.block);
  }
  return tk.length;
}

Status Channel::recv(Message& out, Timeout timeout) {
  out.reset();
  if (out.inline_.size() < h_->inlineSize) {
    out.inline_.resize(h_->inlineSize);
  }
  Taken tk;
  DRAGON_TRY(recvWith(
      [&, holder = holderWordOfReceiver()] {
        return tryRecvSlot(*pool_, h_, out.inline_.data(), h_->inlineSize, false, holder, tk);
      },
      timeout));
  out.size_ = tk.length;
  if (tk.kind == SlotKind::Block) {
    out.pool_ = pool_;
    out.block_ = tk.block;
  }
  return Status::ok();
}

std::uint64_t Channel::holderWordOfReceiver() const noexcept {
  if (h_->tracksHolder == 0) return 0;
  if (receiveAs_ != 0) return receiveAs_;
  // The pid as the pool caches it (refreshed in a forked child): no system call per receive.
  return holderWord(h_->node, static_cast<std::uint32_t>(OwnerTag::self().value()));
}

bool Channel::breakHold(const std::function<bool(std::uint64_t)>& gone, bool cleanEnd) {
  if (h_->tracksHolder == 0 || (cleanEnd && h_->tracksHolder != 2)) return false;
  // A look without the lock first: a gone holder's word was stored before it went (and no
  // receive is made for it after), so a word that is not gone's is the holder's now. Only a
  // channel that may break takes its users' send lock.
  const std::uint64_t seen = h_->holder.load(std::memory_order_acquire);
  if (seen == 0 || !gone(seen)) return false;
  {
    if (!detail::lockSend(h_).isOk()) return false;
    base::RobustGuard guard(&h_->sendLock);
    const std::uint64_t w = h_->holder.load(std::memory_order_acquire);
    if (w == 0 || h_->closed.load(std::memory_order_relaxed) != 0 || !gone(w)) return false;
    // The token still queued: its last receiver died before taking it (or it was given
    // back by another process): nobody holds it.
    if (detail::published(h_, h_->head.load(std::memory_order_acquire))) return false;
    h_->closed.store(detail::kClosedHolderGone, std::memory_order_release);
  }
  DRAGON_LOG(Info, "channel", "channel %llu broken: its holder %llu is gone",
             static_cast<unsigned long long>(h_->id), static_cast<unsigned long long>(holder()));
  base::WaitWord::notifyAlways(h_->notEmpty);
  base::WaitWord::notifyAlways(h_->notFull);
  return true;
}

Status Channel::close() {
  {
    DRAGON_TRY(detail::lockSend(h_));
    base::RobustGuard guard(&h_->sendLock);
    std::uint32_t open = 0;  // a broken channel stays broken (and says why)
    h_->closed.compare_exchange_strong(open, detail::kClosedByClose, std::memory_order_release);
  }
  base::WaitWord::notifyAlways(h_->notEmpty);
  base::WaitWord::notifyAlways(h_->notFull);
  return Status::ok();
}

Status Channel::destroy() {
  std::vector<PoolAllocation> queued;
  {
    DRAGON_TRY(detail::lockSend(h_));
    base::RobustGuard sendGuard(&h_->sendLock);
    DRAGON_TRY(detail::lockRecv(h_));
    base::RobustGuard recvGuard(&h_->recvLock);
    h_->closed.store(1, std::memory_order_release);
    const std::uint64_t t = h_->tail.load(std::memory_order_relaxed);
    for (std::uint64_t i = h_->head.load(std::memory_order_relaxed); i < t; ++i) {
      Slot* s = detail::slotAt(h_, i);
      if (s->kind == SlotKind::Block) {
        if (auto a = pool_->allocationAt(s->blockOffset); a.has_value()) {
          queued.push_back(*a);
        }
      }
    }
    h_->head.store(t, std::memory_order_release);
    std::atomic_ref<std::uint64_t>(h_->magic).store(0, std::memory_order_release);
  }
  base::WaitWord::notifyAlways(h_->notEmpty);
  base::WaitWord::notifyAlways(h_->notFull);
  for (const PoolAllocation& a : queued) {
    (void)pool_->free(a);
  }
  auto self = pool_->allocationAt(offset_);
  if (!self.has_value()) {
    return Status(StatusCode::Corrupt, "channel memory is no longer allocated");
  }
  return pool_->free(*self);
}

}  // namespace dragon
