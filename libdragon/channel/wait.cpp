// SPDX-License-Identifier: MIT
// Message, waiting on many channels, and reclaiming orphaned blocks.
#include <dragon/channel.hpp>

#include "base/futex.hpp"
#include "base/robust_mutex.hpp"
#include "channel/layout.hpp"

#include <cerrno>
#include <csignal>
#include <unordered_map>
#include <unordered_set>

namespace dragon {

using detail::ChannelHeader;

Message::Message(Message&& o) noexcept
    : pool_(std::exchange(o.pool_, nullptr)),
      block_(o.block_),
      inline_(std::move(o.inline_)),
      size_(std::exchange(o.size_, 0)) {}

Message& Message::operator=(Message&& o) noexcept {
  if (this != &o) {
    reset();
    pool_ = std::exchange(o.pool_, nullptr);
    block_ = o.block_;
    inline_ = std::move(o.inline_);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

std::span<const std::byte> Message::data() const noexcept {
  if (pool_ != nullptr) {
    return {static_cast<const std::byte*>(pool_->pointer(block_)), size_};
  }
  return {inline_.data(), size_};
}

std::span<std::byte> Message::mutableData() noexcept {
  if (pool_ != nullptr) {
    return {static_cast<std::byte*>(pool_->pointer(block_)), size_};
  }
  return {inline_.data(), size_};
}

Result<PoolAllocation> Message::takeBlock() {
  if (pool_ == nullptr) {
    return Status(StatusCode::InvalidArgument, "message was copied inline: it has no block");
  }
  pool_ = nullptr;
  size_ = 0;
  return block_;
}

void Message::reset() noexcept {
  if (pool_ != nullptr) {
    (void)pool_->free(block_);
    pool_ = nullptr;
  }
  size_ = 0;
}

Result<std::size_t> Channel::waitAny(std::span<WaitItem> items, Timeout timeout) {
  if (items.size() > kMaxWaitItems) {
    return Status(StatusCode::InvalidArgument,
                  "waitAny takes at most " + std::to_string(kMaxWaitItems) + " items");
  }
  for (const WaitItem& it : items) {
    if (it.channel == nullptr || (static_cast<unsigned>(it.events) & 3u) == 0) {
      return Status(StatusCode::InvalidArgument, "waitAny item without a channel or events");
    }
  }
  auto check = [&] {
    std::size_t n = 0;
    for (WaitItem& it : items) {
      unsigned ready = 0;
      const auto ev = static_cast<unsigned>(it.events);
      if ((ev & 1u) != 0 && it.channel->readable()) {
        ready |= 1u;
      }
      if ((ev & 2u) != 0 && it.channel->writable()) {
        ready |= 2u;
      }
      it.ready = static_cast<WaitFor>(ready);
      n += ready != 0 ? 1 : 0;
    }
    return n;
  };
  std::size_t n = check();
  if (n > 0 || timeout.isNone()) {
    return n;
  }
  for (int i = 0; i < 256 && n == 0; ++i) {
    base::cpuRelax();
    n = check();
  }
  if (n > 0) {
    return n;
  }
  const Deadline deadline(timeout);
  base::FutexWaitItem words[2 * kMaxWaitItems];
  for (;;) {
    std::size_t w = 0;
    for (const WaitItem& it : items) {
      const auto ev = static_cast<unsigned>(it.events);
      if ((ev & 1u) != 0) {
        auto& word = it.channel->h_->notEmpty;
        words[w++] = {&word, base::WaitWord::arm(word)};
      }
      if ((ev & 2u) != 0) {
        auto& word = it.channel->h_->notFull;
        words[w++] = {&word, base::WaitWord::arm(word)};
      }
    }
    n = check();
    if (n > 0) {
      return n;
    }
    if (base::futexWaitMany({words, w}, deadline) == base::WaitOutcome::TimedOut) {
      return check();
    }
  }
}

Result<std::size_t> Channel::reclaimOrphans(Pool& pool) {
  // For every channel seen, the blocks its ring holds, snapshotted under both of its locks: with
  // them held no live sender or receiver is half-way through a hand-over, so a block tagged for
  // the channel but absent from its ring can never be claimed again.
  std::unordered_map<std::uint64_t, std::unordered_set<std::uint64_t>> rings;
  std::unordered_set<std::uint64_t> keepAll;  // channels whose ring could not be read
  auto ringOf = [&](std::uint64_t channelOffset) -> const std::unordered_set<std::uint64_t>* {
    if (auto it = rings.find(channelOffset); it != rings.end()) {
      return &it->second;
    }
    auto& ring = rings[channelOffset];
    auto a = pool.allocationAt(channelOffset);
    if (!a.has_value() || a->size < sizeof(ChannelHeader)) {
      return &ring;  // the channel is gone: nothing it held is live
    }
    auto* h = static_cast<ChannelHeader*>(pool.pointer(*a));
    if (std::atomic_ref<std::uint64_t>(h->magic).load(std::memory_order_acquire) !=
        detail::kChannelMagic) {
      return &ring;
    }
    for (pthread_mutex_t* m : {&h->sendLock, &h->recvLock}) {
      switch (base::RobustMutex::lock(m)) {
        case base::LockState::Locked:
          break;
        case base::LockState::OwnerDied:
          base::RobustMutex::markConsistent(m);
          break;
        case base::LockState::Unrecoverable:
          // Never left so by this code; keep everything the channel may hold.
          if (m == &h->recvLock) {
            base::RobustMutex::unlock(&h->sendLock);
          }
          keepAll.insert(channelOffset);
          return &ring;
      }
    }
    const std::uint64_t t = h->tail.load(std::memory_order_acquire);
    for (std::uint64_t i = h->head.load(std::memory_order_acquire); i < t; ++i) {
      detail::Slot* s = detail::slotAt(h, i);
      if (s->kind == detail::SlotKind::Block) {
        ring.insert(s->blockOffset);
      }
    }
    base::RobustMutex::unlock(&h->recvLock);
    base::RobustMutex::unlock(&h->sendLock);
    return &ring;
  };
  return pool.reclaim([&](OwnerTag owner, const PoolAllocation& a) {
    switch (owner.kind()) {
      case OwnerTag::Kind::Process:
        return ::kill(static_cast<pid_t>(owner.value()), 0) == 0 || errno != ESRCH;
      case OwnerTag::Kind::Channel:
        return ringOf(owner.value())->count(a.offset) != 0 || keepAll.count(owner.value()) != 0;
      case OwnerTag::Kind::Object:
      case OwnerTag::Kind::None:
        break;
    }
    return true;
  });
}

}  // namespace dragon
