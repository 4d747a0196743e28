// SPDX-License-Identifier: MIT
// Non-blocking Unix-socket I/O that carries file descriptors (SCM_RIGHTS) with the bytes, and
// the conversions between protocol messages and core types that both ends share.
#pragma once

#include "base/private.hpp"

#include <dragon/descriptor.hpp>
#include <dragon/result.hpp>
#include <dragon/unique_fd.hpp>

#include <cstddef>
#include <span>
#include <vector>

#include "dragon.pb.h"

namespace dragon::protocol {

// At most this many fds travel with one message.
inline constexpr std::size_t kMaxFdsPerMessage = 64;

// One sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL): the bytes written (the fds went with the first),
// WouldBlock when the socket is full, PeerLost when the peer has gone.
Result<std::size_t> sendSome(int sock, std::span<const char> bytes, std::span<const int> fds);
// One recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC) into `buf`: the bytes read, with any fds that
// came along appended to `fds`; WouldBlock when nothing is there; PeerLost at end of stream.
Result<std::size_t> recvSome(int sock, std::span<char> buf, std::vector<UniqueFd>& fds);
// Writes all of `bytes`, waiting for room (a client's requests are small).
Status sendAll(int sock, std::span<const char> bytes, std::span<const int> fds);

inline ObjectRef toRef(const ObjectDescriptor& d) {
  ObjectRef r;
  const auto bytes = d.serialize();
  r.set_serialized(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  return r;
}

inline Result<ObjectDescriptor> fromRef(const ObjectRef& r) {
  const auto& s = r.serialized();
  return ObjectDescriptor::parse(
      std::span<const std::byte>(reinterpret_cast<const std::byte*>(s.data()), s.size()));
}

// The Status an Error message carries (an unknown code becomes Internal).
Status statusFromError(const Error& e);
void fillError(Error& e, const Status& st);

}  // namespace dragon::protocol
