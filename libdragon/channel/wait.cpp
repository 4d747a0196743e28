// SPDX-License-Identifier: MIT
// Message, waiting on many channels, and reclaiming orphaned blocks.
#include <dragon/channel.hpp>

#include "base/futex.hpp"
#include "base/robust_mutex.hpp"
#include "channel/layout.hpp"

#include <cerrno>
#include <csignal>
#include <ctime>
#include <unordered_map>
#include <unordered_set>
#include <vector>

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

Message Message::fromBytes(std::vector<std::byte> bytes) {
  Message m;
  m.size_ = bytes.size();
  m.inline_ = std::move(bytes);
  return m;
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
  if (items.empty()) {
    // Nothing can become ready: the wait is the timeout, and without one it would never end.
    if (timeout.isForever()) {
      return Status(StatusCode::InvalidArgument,
                    "waitAny with nothing to wait on and no deadline would never return");
    }
    if (!timeout.isNone()) {
      const Deadline deadline(timeout);
      timespec until{};
      const std::int64_t at = deadline.monotonicNs();
      until.tv_sec = static_cast<time_t>(at / 1'000'000'000);
      until.tv_nsec = static_cast<long>(at % 1'000'000'000);
      while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, nullptr) == EINTR) {
      }
    }
    return std::size_t{0};
  }
  auto check = [&] {
    std::size_t n = 0;
    for (WaitItem& it : items) {
      unsigned ready = 0;
      const auto ev = static_cast<unsigned>(it.events);
      // Readable: a recv would not block, which a closed channel's would not either.
      if ((ev & 1u) != 0 && (it.channel->readable() || it.channel->isClosed())) {
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

namespace {

bool processAlive(std::uint64_t pid) {
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH;
}

// Holds both locks of every channel it has snapshotted, until destroyed.
class RingSnapshots {
 public:
  explicit RingSnapshots(Pool& pool) : pool_(pool) {}
  RingSnapshots(const RingSnapshots&) = delete;
  RingSnapshots& operator=(const RingSnapshots&) = delete;
  ~RingSnapshots() {
    for (pthread_mutex_t* m : held_) {
      base::RobustMutex::unlock(m);
    }
  }

  // The blocks queued in the channel at `channelOffset`, or nullptr when they cannot be read
  // (then everything tagged for it must be kept).
  const std::unordered_set<std::uint64_t>* ring(std::uint64_t channelOffset) {
    if (auto it = rings_.find(channelOffset); it != rings_.end()) {
      return it->second.readable ? &it->second.blocks : nullptr;
    }
    Entry& e = rings_[channelOffset];
    auto a = pool_.allocationAt(channelOffset);
    if (!a.has_value() || a->size < sizeof(ChannelHeader)) {
      return &e.blocks;  // the channel is gone: nothing it held is live
    }
    auto* h = static_cast<ChannelHeader*>(pool_.pointer(*a));
    if (std::atomic_ref<std::uint64_t>(h->magic).load(std::memory_order_acquire) !=
        detail::kChannelMagic) {
      return &e.blocks;
    }
    if (!detail::lockSend(h).isOk()) {
      e.readable = false;
      return nullptr;
    }
    held_.push_back(&h->sendLock);
    if (!detail::lockRecv(h).isOk()) {
      e.readable = false;
      return nullptr;
    }
    held_.push_back(&h->recvLock);
    const std::uint64_t t = h->tail.load(std::memory_order_acquire);
    for (std::uint64_t i = h->head.load(std::memory_order_acquire); i < t; ++i) {
      detail::Slot* s = detail::slotAt(h, i);
      if (s->kind == detail::SlotKind::Block) {
        e.blocks.insert(s->blockOffset);
      }
    }
    return &e.blocks;
  }

 private:
  struct Entry {
    std::unordered_set<std::uint64_t> blocks;
    bool readable = true;
  };
  Pool& pool_;
  std::unordered_map<std::uint64_t, Entry> rings_;
  std::vector<pthread_mutex_t*> held_;
};

}  // namespace

Result<std::size_t> Channel::reclaimOrphans(Pool& pool) {
  // A channel's tags only change under its locks (send: tag for the channel, then commit tail,
  // under the send lock; receive: commit head, then tag for the receiver, under the receive
  // lock). So once both are held, and held until the frees are done, a block tagged for the
  // channel but absent from its ring is orphaned for good. The tag read before the locks were
  // taken may be stale: it is read again under them. Lock order: pool, then send, then receive;
  // nothing that holds a channel lock ever waits for the pool lock.
  RingSnapshots snapshots(pool);
  return pool.reclaim([&](OwnerTag owner, const PoolAllocation& a) {
    if (owner.kind() == OwnerTag::Kind::Channel) {
      const auto* ring = snapshots.ring(owner.value());
      auto now = pool.ownerOf(a);
      if (now.has_value() && *now != owner) {
        owner = *now;  // handed on while we waited for the locks
      } else {
        return ring == nullptr || ring->count(a.offset) != 0;
      }
    }
    switch (owner.kind()) {
      case OwnerTag::Kind::Process:
        return processAlive(owner.value());
      case OwnerTag::Kind::Channel:
      case OwnerTag::Kind::Object:
      case OwnerTag::Kind::None:
        break;
    }
    return true;
  });
}

}  // namespace dragon
