// SPDX-License-Identifier: MIT
// Test helper: writes LINES numbered lines "ID:N:PAYLOAD\n" to stdout (and every 7th to
// stderr), in write() calls of random sizes that cut lines anywhere, so the reader must join
// pieces. The payload length varies with N and is checkable from ID and N alone.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <unistd.h>

namespace {
void writeAll(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w <= 0) _exit(3);
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  const long id = std::atol(argv[1]);
  const long lines = std::atol(argv[2]);
  std::mt19937 rng(static_cast<unsigned>(id));
  std::string out, err;
  auto flush = [&](std::string& buf, int fd, bool all) {
    while (!buf.empty()) {
      std::size_t n = 1 + rng() % 4096;
      if (n > buf.size()) {
        if (!all) return;
        n = buf.size();
      }
      writeAll(fd, buf.data(), n);
      buf.erase(0, n);
    }
  };
  for (long n = 0; n < lines; ++n) {
    std::string line = std::to_string(id) + ":" + std::to_string(n) + ":";
    line.append(static_cast<std::size_t>(n % 97), static_cast<char>('a' + (id + n) % 26));
    line += '\n';
    (n % 7 == 0 ? err : out) += line;
    if (out.size() > 8192) flush(out, 1, false);
    if (err.size() > 8192) flush(err, 2, false);
  }
  flush(out, 1, true);
  flush(err, 2, true);
  return static_cast<int>(id % 50);
}
