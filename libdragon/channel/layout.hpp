// SPDX-License-Identifier: MIT
// The shared-memory layout of a channel: one pool allocation holding this header and a ring of
// `capacity` slots. Senders serialise on sendLock and publish message t by storing t+1 in its
// slot's `seq` (in the same cache line as the slot header and a small payload, so a receiver
// polls one line), then advance `tail`. Receivers serialise on recvLock and commit by advancing
// `head`. Senders read `head` only when their cached copy says the ring is full. Both locks are
// robust. The only repair a dead owner can need: a sender killed between publishing and
// advancing `tail`; whoever next takes the send lock advances it (lockSend()).
//
// Ownership of a large message's pool block, for reclaimOrphans():
//   send: (under sendLock) tag the block as queued in this channel, fill the slot, commit tail;
//   recv: (under recvLock) commit head, then tag the block as the receiver's.
// A block tagged for the channel but not in [head, tail) was orphaned by a killed sender or
// receiver; one tagged with a dead pid belonged to a killed process.
//
// The holder of a channel that tracks it (ChannelOptions::trackHolder, a lock's one token):
//   recv: (under recvLock) store the receiver's holder word, then commit head;
//   send: (under sendLock) clear the holder before publishing the slot, so a receiver of that
//   slot stores its own word after the clear.
// breakHold() (under sendLock, so no send clears the word meanwhile) closes the channel with
// kClosedHolderGone when the holder is one that is gone and the token is not queued (a
// receiver killed between storing its word and committing head took nothing), keeping the
// word to name it.
#pragma once

#include "base/private.hpp"

#include <dragon/channel.hpp>

#include <atomic>
#include <cstdint>
#include <pthread.h>

namespace dragon::detail {

inline constexpr std::uint64_t kChannelMagic = 0x4c4e48434e475244ull;  // "DRGNCHNL"
inline constexpr std::uint32_t kChannelVersion = 2;
inline constexpr std::uint32_t kMaxCapacity = 1u << 24;
inline constexpr std::uint32_t kMaxInline = 1u << 20;
inline constexpr std::uint32_t kClosedByClose = 1;
inline constexpr std::uint32_t kClosedHolderGone = 2;

enum class SlotKind : std::uint32_t { Inline = 1, Block = 2 };

struct Slot {
  SlotKind kind;
  std::uint32_t reserved;
  std::uint64_t length;
  std::uint64_t blockOffset;  // payload offset of the pool block (Block only)
  std::atomic<std::uint64_t> seq;  // t+1 once message t is published in this slot
  // followed by the inline bytes
};
static_assert(sizeof(Slot) == 32);

struct alignas(64) ChannelHeader {
  std::uint64_t magic;  // written last at creation, cleared by destroy()
  std::uint32_t version;
  std::uint32_t capacity;
  std::uint64_t id;
  std::uint32_t inlineSize;
  std::uint32_t slotStride;
  std::uint64_t maxMessageSize;
  std::uint64_t slotsOffset;  // from the start of this header
  std::uint32_t node;
  std::uint32_t tracksHolder;  // 1: `holder` is kept (trackHolder); 2: and owns it (holderOwns)

  alignas(64) pthread_mutex_t sendLock;
  alignas(64) pthread_mutex_t recvLock;
  alignas(64) std::atomic<std::uint64_t> tail;  // messages ever committed by senders
  std::uint64_t cachedHead;                      // senders' last view of head (under sendLock)
  alignas(64) std::atomic<std::uint64_t> head;  // messages ever committed by receivers
  alignas(64) std::atomic<std::uint32_t> notEmpty;  // wait words (base/futex.hpp)
  alignas(64) std::atomic<std::uint32_t> notFull;
  alignas(64) std::atomic<std::uint32_t> closed;  // 0, kClosedByClose or kClosedHolderGone
  std::atomic<std::uint64_t> holder;  // Channel::holderWord of the last receiver; 0: none
};

inline Slot* slotAt(ChannelHeader* h, std::uint64_t seq) noexcept {
  return reinterpret_cast<Slot*>(reinterpret_cast<char*>(h) + h->slotsOffset +
                                 (seq % h->capacity) * h->slotStride);
}
inline std::byte* inlineBytes(Slot* s) noexcept { return reinterpret_cast<std::byte*>(s + 1); }
inline bool published(ChannelHeader* h, std::uint64_t seq) noexcept {
  return slotAt(h, seq)->seq.load(std::memory_order_acquire) == seq + 1;
}

// Take the send or receive lock, repairing what a dead owner may have left (see above).
// Corrupt only if a lock was left unrecoverable, which this code never does.
Status lockSend(ChannelHeader* h) noexcept;
Status lockRecv(ChannelHeader* h) noexcept;

}  // namespace dragon::detail
