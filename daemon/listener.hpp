// SPDX-License-Identifier: MIT
// The listening socket: inherited from systemd (socket activation), or bound in a private
// runtime directory that is created safely (0700, owned by us, not a symlink).
#pragma once

#include "base/private.hpp"

#include <dragon/result.hpp>
#include <dragon/unique_fd.hpp>

#include <string>

namespace dragon::daemon {

// Creates `dir` 0700 if missing; refuses one that is a symlink, not ours, or open to others.
Status ensurePrivateDir(const std::string& dir);
// Binds and listens on `path` (0600). A stale socket file is replaced; a live one (another
// dragond answers) is AlreadyExists.
Result<UniqueFd> bindListener(const std::string& path);
// Removes the job sockets (job-*.sock) in `dir` that belong to this user, are at least
// `minAgeSeconds` old and that nobody listens on any more: those of private dragonds that were
// killed (SIGKILL, as Slurm ends a step it forces down) before they could remove them. Returns
// how many went.
std::size_t sweepStaleJobSockets(const std::string& dir, std::int64_t minAgeSeconds);
// The first socket systemd passed (LISTEN_FDS), if any: NotFound when none.
Result<UniqueFd> inheritedListener();

}  // namespace dragon::daemon
